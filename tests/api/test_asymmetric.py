"""Asymmetric (RSA, ECC) and HMAC keys: CreateKey/DescribeKey of every spec and usage,
Sign/Verify checked by OpenSSL and Python `cryptography` with GetPublicKey's key, RSA-OAEP
ciphertext made by OpenSSL decrypted by kmsfs, GenerateMac/VerifyMac, DeriveSharedSecret
against an ECDH computed by `cryptography`, GenerateDataKeyPair with OpenSSL signing with the
private key, no API handing out a KMS key's private key, AWS's errors for bad input, and the
aws CLI's sign/verify/get-public-key/generate-mac/verify-mac."""

import base64
import hashlib
import json
import os
import subprocess

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from kmsapi import assert_enums, key_arn, raises_code

SIGNING = {
    "RSA_2048": [
        "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
        "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    ],
    "ECC_NIST_P256": ["ECDSA_SHA_256"],
    "ECC_NIST_P384": ["ECDSA_SHA_384"],
    "ECC_NIST_P521": ["ECDSA_SHA_512"],
    "ECC_SECG_P256K1": ["ECDSA_SHA_256"],
    "ECC_NIST_EDWARDS25519": ["ED25519_SHA_512"],
}
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
MESSAGE = b"the quick brown fox signs a document\n"


@pytest.fixture(scope="module")
def signers(api):
    """One SIGN_VERIFY key per spec: {spec: key id}."""
    return {spec: api.new_key(f"signer {spec}", KeySpec=spec, KeyUsage="SIGN_VERIFY") for spec in SIGNING}


@pytest.fixture(scope="module")
def rsa_enc(api):
    return api.new_key("rsa encryption", KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")


@pytest.fixture(scope="module")
def hmac_keys(api):
    return {n: api.new_key(f"hmac {n}", KeySpec=f"HMAC_{n}", KeyUsage="GENERATE_VERIFY_MAC") for n in (224, 256, 384, 512)}


def public_pem(api, key_id, tmp_path):
    der = api.alice.get_public_key(KeyId=key_id)["PublicKey"]
    path = tmp_path / f"{key_id}.pem"
    path.write_bytes(serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, serialization.load_der_public_key(der)


def openssl(*args, input=None):
    out = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
    return out


# ---- CreateKey / DescribeKey ---------------------------------------------------------

VALID = [
    ("RSA_2048", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]),
    ("RSA_3072", "SIGN_VERIFY", "SigningAlgorithms", SIGNING["RSA_2048"]),
    ("RSA_4096", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]),
    ("ECC_NIST_P256", "KEY_AGREEMENT", "KeyAgreementAlgorithms", ["ECDH"]),
    ("ECC_NIST_P384", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_384"]),
    ("ECC_NIST_P521", "KEY_AGREEMENT", "KeyAgreementAlgorithms", ["ECDH"]),
    ("ECC_SECG_P256K1", "SIGN_VERIFY", "SigningAlgorithms", ["ECDSA_SHA_256"]),
    ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY", "SigningAlgorithms", ["ED25519_SHA_512"]),
    ("HMAC_224", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_224"]),
    ("HMAC_512", "GENERATE_VERIFY_MAC", "MacAlgorithms", ["HMAC_SHA_512"]),
]


@pytest.mark.parametrize("spec,usage,member,algorithms", VALID, ids=[f"{s}-{u}" for s, u, _, _ in VALID])
def test_create_and_describe_every_spec(api, kms_model, spec, usage, member, algorithms):
    meta = api.alice.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    assert_enums(kms_model, "CreateKey", {"KeyMetadata": meta})
    described = api.alice.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    for m in (meta, described):
        assert m["KeySpec"] == spec
        # The deprecated CustomerMasterKeySpec has no Edwards value in the model.
        assert m.get("CustomerMasterKeySpec") == (None if spec == "ECC_NIST_EDWARDS25519" else spec)
        assert m["KeyUsage"] == usage
        assert sorted(m[member]) == sorted(algorithms)
        others = {"EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms", "KeyAgreementAlgorithms"} - {member}
        assert not others & set(m), m
    assert described["KeyState"] == "Enabled"


@pytest.mark.parametrize("spec,usage", [
    ("ECC_NIST_P256", "ENCRYPT_DECRYPT"),
    ("RSA_2048", "GENERATE_VERIFY_MAC"),
    ("RSA_2048", "KEY_AGREEMENT"),
    ("HMAC_256", "SIGN_VERIFY"),
    ("HMAC_256", None),
    ("ECC_SECG_P256K1", "KEY_AGREEMENT"),
    ("ECC_NIST_EDWARDS25519", "KEY_AGREEMENT"),
    ("SYMMETRIC_DEFAULT", "SIGN_VERIFY"),
])
def test_invalid_spec_usage_is_validation_and_leaves_no_key(api, spec, usage):
    before = {k["KeyId"] for k in api.alice.list_keys(Limit=1000)["Keys"]}
    with raises_code("ValidationException"):
        api.alice.create_key(KeySpec=spec, **({"KeyUsage": usage} if usage else {}))
    assert {k["KeyId"] for k in api.alice.list_keys(Limit=1000)["Keys"]} == before


def test_rotation_is_refused_for_asymmetric_and_hmac_keys(api, signers, hmac_keys):
    for key in (signers["ECC_NIST_P256"], hmac_keys[256]):
        with raises_code("UnsupportedOperationException"):
            api.alice.enable_key_rotation(KeyId=key)
        with raises_code("UnsupportedOperationException"):
            api.alice.rotate_key_on_demand(KeyId=key)
        assert api.alice.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False


# ---- Sign / Verify: real tools verify kmsfs's signatures -----------------------------

CASES = [(spec, alg) for spec, algs in SIGNING.items() for alg in algs]


def verify_with_cryptography(public, alg, message, signature):
    if alg == "ED25519_SHA_512":
        public.verify(signature, message)
        return
    h = HASHES[alg[-3:]]()
    if alg.startswith("RSASSA_PSS"):
        public.verify(signature, message, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    elif alg.startswith("RSASSA_PKCS1"):
        public.verify(signature, message, padding.PKCS1v15(), h)
    else:
        public.verify(signature, message, ec.ECDSA(h))


def verify_with_openssl(pem, alg, msg_path, sig_path):
    if alg == "ED25519_SHA_512":
        return openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin", "-in", str(msg_path),
                       "-sigfile", str(sig_path))
    opts = []
    if alg.startswith("RSASSA_PSS"):
        opts = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
    return openssl("dgst", f"-sha{alg[-3:]}", "-verify", str(pem), *opts, "-signature", str(sig_path), str(msg_path))


@pytest.mark.parametrize("spec,alg", CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_signature_verifies_in_openssl_and_cryptography(api, signers, tmp_path, kms_model, spec, alg):
    key = signers[spec]
    resp = api.alice.sign(KeyId=key, Message=MESSAGE, MessageType="RAW", SigningAlgorithm=alg)
    assert_enums(kms_model, "Sign", resp)
    assert resp["KeyId"] == key_arn(key) and resp["SigningAlgorithm"] == alg
    sig = resp["Signature"]
    pem, public = public_pem(api, key, tmp_path)
    msg_path, sig_path = tmp_path / "msg", tmp_path / "sig"
    msg_path.write_bytes(MESSAGE)
    sig_path.write_bytes(sig)
    out = verify_with_openssl(pem, alg, msg_path, sig_path)
    assert out.returncode == 0 and (b"Verified OK" in out.stdout or b"Verified Successfully" in out.stdout), out
    verify_with_cryptography(public, alg, MESSAGE, sig)
    if alg.startswith("ECDSA"):
        r, s = utils.decode_dss_signature(sig)  # DER, as AWS returns ECDSA signatures
        assert r > 0 and s > 0
    # The same signature, one bit flipped: OpenSSL, cryptography and kmsfs refuse it.
    bad = bytearray(sig)
    bad[len(bad) // 2] ^= 0x01
    sig_path.write_bytes(bytes(bad))
    assert verify_with_openssl(pem, alg, msg_path, sig_path).returncode != 0
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(public, alg, MESSAGE, bytes(bad))
    ok = api.alice.verify(KeyId=key, Message=MESSAGE, Signature=sig, SigningAlgorithm=alg)
    assert ok["SignatureValid"] is True and ok["KeyId"] == key_arn(key)
    with raises_code("KMSInvalidSignatureException"):
        api.alice.verify(KeyId=key, Message=MESSAGE, Signature=bytes(bad), SigningAlgorithm=alg)
    with raises_code("KMSInvalidSignatureException"):
        api.alice.verify(KeyId=key, Message=MESSAGE + b"!", Signature=sig, SigningAlgorithm=alg)


@pytest.mark.parametrize("spec,alg", [c for c in CASES if c[1] != "ED25519_SHA_512"],
                         ids=[f"{s}-{a}" for s, a in CASES if a != "ED25519_SHA_512"])
def test_digest_message_type(api, signers, tmp_path, spec, alg):
    key = signers[spec]
    name = {"256": "sha256", "384": "sha384", "512": "sha512"}[alg[-3:]]
    digest = hashlib.new(name, MESSAGE).digest()
    sig = api.alice.sign(KeyId=key, Message=digest, MessageType="DIGEST", SigningAlgorithm=alg)["Signature"]
    # A signature of the digest is a signature of the message.
    _, public = public_pem(api, key, tmp_path)
    verify_with_cryptography(public, alg, MESSAGE, sig)
    assert api.alice.verify(KeyId=key, Message=MESSAGE, Signature=sig, SigningAlgorithm=alg)["SignatureValid"]
    with raises_code("ValidationException"):
        api.alice.sign(KeyId=key, Message=digest[:-1], MessageType="DIGEST", SigningAlgorithm=alg)
    with raises_code("ValidationException"):
        api.alice.sign(KeyId=key, Message=digest + b"\0", MessageType="DIGEST", SigningAlgorithm=alg)


def test_sign_bad_input_gets_awss_errors(api, signers, key, rsa_enc, hmac_keys):
    p256 = signers["ECC_NIST_P256"]
    with raises_code("InvalidKeyUsageException"):
        api.alice.sign(KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
    with raises_code("InvalidKeyUsageException"):
        api.alice.sign(KeyId=p256, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")
    with raises_code("InvalidKeyUsageException"):
        api.alice.sign(KeyId=signers["RSA_2048"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    for wrong in (key, rsa_enc, hmac_keys[256]):
        with raises_code("InvalidKeyUsageException"):
            api.alice.sign(KeyId=wrong, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert api.alice.sign(KeyId=p256, Message=b"x" * 4096, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    with raises_code("ValidationException"):
        api.alice_raw.sign(KeyId=p256, Message=b"x" * 4097, SigningAlgorithm="ECDSA_SHA_256")
    with raises_code("ValidationException"):
        api.alice_raw.sign(KeyId=p256, Message=b"m", SigningAlgorithm="NOT_AN_ALGORITHM")
    with raises_code("NotFoundException"):
        api.alice.sign(KeyId="alias/no-such-signer", Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    # A signing key does no symmetric encryption and has no MACs.
    with raises_code("InvalidKeyUsageException"):
        api.alice.encrypt(KeyId=p256, Plaintext=b"m")
    with raises_code("InvalidKeyUsageException"):
        api.alice.generate_data_key(KeyId=p256, KeySpec="AES_256")
    with raises_code("InvalidKeyUsageException"):
        api.alice.generate_mac(KeyId=p256, Message=b"m", MacAlgorithm="HMAC_SHA_256")
    with raises_code("InvalidKeyUsageException"):
        api.alice.derive_shared_secret(KeyId=p256, KeyAgreementAlgorithm="ECDH", PublicKey=b"x")
    # The server is still up and well.
    assert api.alice.sign(KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]


def test_get_public_key_answers_metadata_and_refuses_symmetric(api, signers, rsa_enc, key, hmac_keys, kms_model):
    resp = api.alice.get_public_key(KeyId=rsa_enc)
    assert_enums(kms_model, "GetPublicKey", resp)
    assert resp["KeyId"] == key_arn(rsa_enc)
    assert resp["KeySpec"] == "RSA_2048" and resp["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert resp["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    public = serialization.load_der_public_key(resp["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    ec_resp = api.alice.get_public_key(KeyId=signers["ECC_SECG_P256K1"])
    assert isinstance(serialization.load_der_public_key(ec_resp["PublicKey"]).curve, ec.SECP256K1)
    assert ec_resp["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    ed = serialization.load_der_public_key(api.alice.get_public_key(KeyId=signers["ECC_NIST_EDWARDS25519"])["PublicKey"])
    assert isinstance(ed, ed25519.Ed25519PublicKey)
    for no_pair in (key, hmac_keys[256]):
        with raises_code("UnsupportedOperationException"):
            api.alice.get_public_key(KeyId=no_pair)


# ---- RSA encryption -----------------------------------------------------------------

@pytest.mark.parametrize("alg,md,limit", [("RSAES_OAEP_SHA_1", "sha1", 214), ("RSAES_OAEP_SHA_256", "sha256", 190)])
def test_openssl_oaep_ciphertext_decrypts_in_kmsfs(api, rsa_enc, tmp_path, alg, md, limit):
    pem, public = public_pem(api, rsa_enc, tmp_path)
    secret = os.urandom(limit)
    (tmp_path / "pt").write_bytes(secret)
    out = openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", str(pem), "-in", str(tmp_path / "pt"),
                  "-out", str(tmp_path / "ct"), "-pkeyopt", "rsa_padding_mode:oaep",
                  "-pkeyopt", f"rsa_oaep_md:{md}", "-pkeyopt", f"rsa_mgf1_md:{md}")
    assert out.returncode == 0, out
    ct = (tmp_path / "ct").read_bytes()
    got = api.alice.decrypt(KeyId=rsa_enc, CiphertextBlob=ct, EncryptionAlgorithm=alg)
    assert got["Plaintext"] == secret and got["EncryptionAlgorithm"] == alg and got["KeyId"] == key_arn(rsa_enc)
    # kmsfs's own ciphertext round-trips, and is OAEP as `cryptography` understands it
    # (it encrypts with the public key; only the private key, which never leaves, decrypts).
    mine = api.alice.encrypt(KeyId=rsa_enc, Plaintext=secret, EncryptionAlgorithm=alg)
    assert mine["EncryptionAlgorithm"] == alg and len(mine["CiphertextBlob"]) == 256
    assert api.alice.decrypt(KeyId=rsa_enc, CiphertextBlob=mine["CiphertextBlob"], EncryptionAlgorithm=alg)["Plaintext"] == secret
    # One byte over AWS's limit is refused; the other OAEP digest does not decrypt it.
    with raises_code("ValidationException"):
        api.alice.encrypt(KeyId=rsa_enc, Plaintext=secret + b"!", EncryptionAlgorithm=alg)
    other = "RSAES_OAEP_SHA_256" if alg == "RSAES_OAEP_SHA_1" else "RSAES_OAEP_SHA_1"
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(KeyId=rsa_enc, CiphertextBlob=ct, EncryptionAlgorithm=other)


def test_rsa_encryption_errors(api, rsa_enc, signers, key):
    with raises_code("InvalidKeyUsageException"):
        api.alice.encrypt(KeyId=rsa_enc, Plaintext=b"m")  # SYMMETRIC_DEFAULT with an RSA key
    with raises_code("InvalidKeyUsageException"):
        api.alice.encrypt(KeyId=signers["RSA_2048"], Plaintext=b"m", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    with raises_code("InvalidKeyUsageException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"m", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    with raises_code("ValidationException"):
        api.alice.decrypt(CiphertextBlob=b"x" * 256, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(KeyId=rsa_enc, CiphertextBlob=b"x" * 256, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    with raises_code("InvalidKeyUsageException"):
        api.alice.sign(KeyId=rsa_enc, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")


# ---- HMAC ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [224, 256, 384, 512])
def test_mac_verifies_and_one_flipped_bit_fails(api, hmac_keys, kms_model, bits):
    key, alg = hmac_keys[bits], f"HMAC_SHA_{bits}"
    resp = api.alice.generate_mac(KeyId=key, Message=MESSAGE, MacAlgorithm=alg)
    assert_enums(kms_model, "GenerateMac", resp)
    mac = resp["Mac"]
    assert len(mac) == bits // 8 and resp["MacAlgorithm"] == alg and resp["KeyId"] == key_arn(key)
    assert api.alice.generate_mac(KeyId=key, Message=MESSAGE, MacAlgorithm=alg)["Mac"] == mac
    ok = api.alice.verify_mac(KeyId=key, Message=MESSAGE, Mac=mac, MacAlgorithm=alg)
    assert ok["MacValid"] is True
    for i in (0, len(mac) - 1):
        bad = bytearray(mac)
        bad[i] ^= 0x01
        with raises_code("KMSInvalidMacException"):
            api.alice.verify_mac(KeyId=key, Message=MESSAGE, Mac=bytes(bad), MacAlgorithm=alg)
    with raises_code("KMSInvalidMacException"):
        api.alice.verify_mac(KeyId=key, Message=MESSAGE + b"x", Mac=mac, MacAlgorithm=alg)
    other = "HMAC_SHA_256" if bits != 256 else "HMAC_SHA_512"
    with raises_code("InvalidKeyUsageException"):
        api.alice.generate_mac(KeyId=key, Message=MESSAGE, MacAlgorithm=other)
    # Another key of the same spec makes another MAC.
    fresh = api.new_key(KeySpec=f"HMAC_{bits}", KeyUsage="GENERATE_VERIFY_MAC")
    assert api.alice.generate_mac(KeyId=fresh, Message=MESSAGE, MacAlgorithm=alg)["Mac"] != mac


def test_mac_errors(api, hmac_keys, key):
    with raises_code("InvalidKeyUsageException"):
        api.alice.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_256")
    with raises_code("InvalidKeyUsageException"):
        api.alice.encrypt(KeyId=hmac_keys[256], Plaintext=b"m")
    with raises_code("ValidationException"):
        api.alice_raw.generate_mac(KeyId=hmac_keys[256], Message=b"m" * 4097, MacAlgorithm="HMAC_SHA_256")


# ---- Key agreement ------------------------------------------------------------------

@pytest.mark.parametrize("spec,curve", [("ECC_NIST_P256", ec.SECP256R1), ("ECC_NIST_P384", ec.SECP384R1),
                                        ("ECC_NIST_P521", ec.SECP521R1)])
def test_derive_shared_secret_matches_cryptographys_ecdh(api, kms_model, spec, curve):
    key = api.new_key(KeySpec=spec, KeyUsage="KEY_AGREEMENT")
    kms_public = serialization.load_der_public_key(api.alice.get_public_key(KeyId=key)["PublicKey"])
    mine = ec.generate_private_key(curve())
    mine_der = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    resp = api.alice.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=mine_der)
    assert_enums(kms_model, "DeriveSharedSecret", resp)
    assert resp["SharedSecret"] == mine.exchange(ec.ECDH(), kms_public)
    assert resp["KeyId"] == key_arn(key) and resp["KeyAgreementAlgorithm"] == "ECDH"
    other_curve = ec.SECP384R1 if curve is not ec.SECP384R1 else ec.SECP256R1
    wrong = ec.generate_private_key(other_curve()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with raises_code("ValidationException"):
        api.alice.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=wrong)
    with raises_code("ValidationException"):
        api.alice.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=b"not a key")
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with raises_code("ValidationException"):
        api.alice.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=rsa_pub)
    with raises_code("InvalidKeyUsageException"):
        api.alice.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")


# ---- Data key pairs -----------------------------------------------------------------

@pytest.mark.parametrize("pair_spec", ["RSA_2048", "ECC_NIST_P256", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519"])
def test_data_key_pair_private_key_signs_in_openssl(api, key, tmp_path, kms_model, pair_spec):
    ctx = {"purpose": "pair test"}
    resp = api.alice.generate_data_key_pair(KeyId=key, KeyPairSpec=pair_spec, EncryptionContext=ctx)
    assert_enums(kms_model, "GenerateDataKeyPair", resp)
    assert resp["KeyId"] == key_arn(key) and resp["KeyPairSpec"] == pair_spec
    private_der = resp["PrivateKeyPlaintext"]
    # The wrapped private key decrypts (with its context only) to the same PKCS#8 key.
    assert api.alice.decrypt(CiphertextBlob=resp["PrivateKeyCiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == private_der
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=resp["PrivateKeyCiphertextBlob"])
    (tmp_path / "key.der").write_bytes(private_der)
    (tmp_path / "msg").write_bytes(MESSAGE)
    if pair_spec == "ECC_NIST_EDWARDS25519":
        out = openssl("pkeyutl", "-sign", "-keyform", "DER", "-inkey", str(tmp_path / "key.der"), "-rawin",
                      "-in", str(tmp_path / "msg"), "-out", str(tmp_path / "sig"))
    else:
        out = openssl("dgst", "-sha256", "-keyform", "DER", "-sign", str(tmp_path / "key.der"),
                      "-out", str(tmp_path / "sig"), str(tmp_path / "msg"))
    assert out.returncode == 0, out
    public = serialization.load_der_public_key(resp["PublicKey"])
    sig = (tmp_path / "sig").read_bytes()
    alg = {"RSA_2048": "RSASSA_PKCS1_V1_5_SHA_256", "ECC_NIST_EDWARDS25519": "ED25519_SHA_512"}.get(pair_spec, "ECDSA_SHA_256")
    verify_with_cryptography(public, alg, MESSAGE, sig)
    bare = api.alice.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec=pair_spec)
    assert "PrivateKeyPlaintext" not in bare
    pkcs8 = api.alice.decrypt(CiphertextBlob=bare["PrivateKeyCiphertextBlob"])["Plaintext"]
    pair_public = serialization.load_der_private_key(pkcs8, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pair_public == bare["PublicKey"]


def test_data_key_pair_needs_a_symmetric_key(api, signers):
    with raises_code("InvalidKeyUsageException"):
        api.alice.generate_data_key_pair(KeyId=signers["RSA_2048"], KeyPairSpec="RSA_2048")
    with raises_code("UnsupportedOperationException"):
        api.alice.generate_data_key_pair(KeyId=api.new_key(), KeyPairSpec="SM2")


# ---- The private key never leaves -----------------------------------------------------

def _blobs(value):
    """Every bytes value, and every base64 string's bytes, in a response."""
    if isinstance(value, (bytes, bytearray)):
        yield bytes(value)
    elif isinstance(value, str):
        try:
            yield base64.b64decode(value, validate=True)
        except ValueError:
            pass
        yield value.encode()
    elif isinstance(value, dict):
        for v in value.values():
            yield from _blobs(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _blobs(v)


def test_no_api_returns_an_asymmetric_keys_private_key(api, rsa_enc, signers):
    key = signers["RSA_2048"]
    public = serialization.load_der_public_key(api.alice.get_public_key(KeyId=key)["PublicKey"])
    modulus = public.public_numbers().n.to_bytes(256, "big")
    responses = []
    calls = [
        lambda c: c.describe_key(KeyId=key),
        lambda c: c.get_public_key(KeyId=key),
        lambda c: c.list_keys(),
        lambda c: c.list_aliases(),
        lambda c: c.get_key_policy(KeyId=key, PolicyName="default"),
        lambda c: c.list_key_rotations(KeyId=key),
        lambda c: c.get_key_rotation_status(KeyId=key),
        lambda c: c.list_grants(KeyId=key),
        lambda c: c.list_resource_tags(KeyId=key),
        lambda c: c.sign(KeyId=key, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256"),
        lambda c: c.encrypt(KeyId=rsa_enc, Plaintext=b"m", EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
        lambda c: c.generate_data_key(KeyId=key, KeySpec="AES_256"),
        lambda c: c.generate_data_key_pair(KeyId=key, KeyPairSpec="RSA_2048"),
        lambda c: c.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256"),
        lambda c: c.re_encrypt(CiphertextBlob=b"x" * 64, DestinationKeyId=key),
        lambda c: c.decrypt(KeyId=key, CiphertextBlob=b"x" * 256, EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
        lambda c: c.decrypt(KeyId=key, CiphertextBlob=b"x" * 64),
        lambda c: c.derive_shared_secret(KeyId=key, KeyAgreementAlgorithm="ECDH", PublicKey=b"x"),
        lambda c: c.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_256"),
        lambda c: c.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"),
    ]
    for call in calls:
        try:
            responses.append(call(api.alice))
        except Exception as e:  # errors are answers too: their messages must not leak either
            responses.append(getattr(e, "response", {"error": str(e)}))
    for resp in responses:
        for b in _blobs(resp):
            with pytest.raises(ValueError):
                serialization.load_der_private_key(b, None)
            assert modulus not in b or is_public_key(b), "a response holds the modulus outside a public key"
    # At rest too: the keystore holds no unsealed private key (its modulus would show).
    db = api.keystore.path.read_bytes()
    wal = api.keystore.path.with_name(api.keystore.path.name + "-wal")
    assert modulus not in db and (not wal.exists() or modulus not in wal.read_bytes())


def is_public_key(b):
    """A DER public key holds the modulus; that is not a leak."""
    try:
        serialization.load_der_public_key(b)
        return True
    except ValueError:
        return False


# ---- Access control, audit, deletion ------------------------------------------------

def test_grants_and_policies_know_sign(api):
    key = api.new_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    with raises_code("AccessDeniedException"):
        api.bob.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    api.alice.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/bob",
                           Operations=["Sign", "GetPublicKey"])
    sig = api.bob.sign(KeyId=key_arn(key), Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert api.bob.get_public_key(KeyId=key_arn(key))["PublicKey"]
    with raises_code("AccessDeniedException"):
        api.bob.verify(KeyId=key_arn(key), Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")


def test_every_use_is_audited(api):
    key = api.new_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    mac = api.alice.generate_mac(KeyId=key, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    api.alice.verify_mac(KeyId=key, Message=b"m", Mac=mac, MacAlgorithm="HMAC_SHA_256")
    with raises_code("KMSInvalidMacException"):
        api.alice.verify_mac(KeyId=key, Message=b"n", Mac=mac, MacAlgorithm="HMAC_SHA_256")
    events = api.keystore.audit("--key", key)
    ops = [(e["Operation"], e.get("ErrorCode")) for e in events]
    assert ("GenerateMac", None) in ops and ("VerifyMac", None) in ops
    assert ("VerifyMac", "KMSInvalidMacException") in ops, ops
    text = json.dumps(events)
    assert base64.b64encode(mac).decode() not in text and mac.hex() not in text


def test_disabled_and_deleted_keys_refuse_to_sign(api):
    key = api.new_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    api.alice.disable_key(KeyId=key)
    with raises_code("DisabledException"):
        api.alice.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    api.alice.enable_key(KeyId=key)
    api.alice.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    with raises_code("KMSInvalidStateException"):
        api.alice.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    with raises_code("KMSInvalidStateException"):
        api.alice.get_public_key(KeyId=key)


# ---- The aws CLI --------------------------------------------------------------------

def test_aws_cli_sign_verify_get_public_key_mac(api, signers, hmac_keys, tmp_path):
    key = signers["ECC_NIST_P256"]
    (tmp_path / "msg").write_bytes(MESSAGE)
    out = json.loads(api.aws("kms", "sign", "--key-id", key, "--message", f"fileb://{tmp_path / 'msg'}",
                             "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_256").stdout)
    sig = base64.b64decode(out["Signature"])
    (tmp_path / "sig").write_bytes(sig)
    ok = json.loads(api.aws("kms", "verify", "--key-id", key, "--message", f"fileb://{tmp_path / 'msg'}",
                            "--signature", f"fileb://{tmp_path / 'sig'}", "--signing-algorithm", "ECDSA_SHA_256").stdout)
    assert ok["SignatureValid"] is True
    pub = json.loads(api.aws("kms", "get-public-key", "--key-id", key).stdout)
    assert pub["KeySpec"] == "ECC_NIST_P256"
    public = serialization.load_der_public_key(base64.b64decode(pub["PublicKey"]))
    public.verify(sig, MESSAGE, ec.ECDSA(hashes.SHA256()))
    (tmp_path / "sig").write_bytes(sig[:-1] + bytes([sig[-1] ^ 1]))
    bad = api.aws("kms", "verify", "--key-id", key, "--message", f"fileb://{tmp_path / 'msg'}",
                  "--signature", f"fileb://{tmp_path / 'sig'}", "--signing-algorithm", "ECDSA_SHA_256", check=False)
    assert bad.returncode != 0 and "KMSInvalidSignatureException" in bad.stderr
    hk = hmac_keys[384]
    mac = json.loads(api.aws("kms", "generate-mac", "--key-id", hk, "--message", f"fileb://{tmp_path / 'msg'}",
                             "--mac-algorithm", "HMAC_SHA_384").stdout)["Mac"]
    (tmp_path / "mac").write_bytes(base64.b64decode(mac))
    ok = json.loads(api.aws("kms", "verify-mac", "--key-id", hk, "--message", f"fileb://{tmp_path / 'msg'}",
                            "--mac", f"fileb://{tmp_path / 'mac'}", "--mac-algorithm", "HMAC_SHA_384").stdout)
    assert ok["MacValid"] is True


def test_kmsfs_cli_creates_asymmetric_keys_and_writes_pem(api, tmp_path):
    meta = api.keystore.json(["key", "create", "--key-spec", "ECC_NIST_P384", "--key-usage", "SIGN_VERIFY"])
    assert meta["KeySpec"] == "ECC_NIST_P384" and meta["KeyUsage"] == "SIGN_VERIFY"
    pem = tmp_path / "pub.pem"
    api.keystore.run(["key", "public-key", meta["KeyId"], "--out", str(pem)])
    public = serialization.load_pem_public_key(pem.read_bytes())
    assert isinstance(public.curve, ec.SECP384R1)
    # The server (another process) sees the key and signs with it; OpenSSL checks it.
    api.keystore.run(["grant", "create", "--key", meta["KeyId"], "--grantee", "arn:aws:iam::111122223333:user/alice",
                      "--operations", "Sign"])
    sig = api.alice.sign(KeyId=meta["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_384")["Signature"]
    (tmp_path / "msg").write_bytes(MESSAGE)
    (tmp_path / "sig").write_bytes(sig)
    out = openssl("dgst", "-sha384", "-verify", str(pem), "-signature", str(tmp_path / "sig"), str(tmp_path / "msg"))
    assert out.returncode == 0, out
    bad = api.keystore.run(["key", "create", "--key-spec", "HMAC_256", "--key-usage", "SIGN_VERIFY"], check=False)
    assert bad.returncode != 0 and b"not compatible" in bad.stderr
    sym = api.keystore.run(["key", "public-key", api.new_key()], check=False)
    assert sym.returncode != 0 and b"public key" in sym.stderr


def test_kmsfs_cli_sign_and_verify_interoperate_with_openssl_and_the_api(api, tmp_path):
    meta = api.keystore.json(["key", "create", "--key-spec", "RSA_2048", "--key-usage", "SIGN_VERIFY"])
    key = meta["KeyId"]
    pem = tmp_path / "pub.pem"
    api.keystore.run(["key", "public-key", key, "--out", str(pem)])
    msg, sig = tmp_path / "msg", tmp_path / "sig"
    msg.write_bytes(MESSAGE)
    api.keystore.run(["sign", "--key", key, "--algorithm", "RSASSA_PSS_SHA_384", "--in", str(msg), "--out", str(sig)])
    out = openssl("dgst", "-sha384", "-verify", str(pem), "-sigopt", "rsa_padding_mode:pss",
                  "-sigopt", "rsa_pss_saltlen:digest", "-signature", str(sig), str(msg))
    assert out.returncode == 0, out
    ok = api.keystore.run(["verify", "--key", key, "--algorithm", "RSASSA_PSS_SHA_384", "--signature", str(sig),
                           "--in", str(msg)])
    assert b"valid" in ok.stdout
    msg.write_bytes(MESSAGE + b"tampered")
    bad = api.keystore.run(["verify", "--key", key, "--algorithm", "RSASSA_PSS_SHA_384", "--signature", str(sig),
                            "--in", str(msg)], check=False)
    assert bad.returncode != 0 and b"does not verify" in bad.stderr
    wrong = api.keystore.run(["sign", "--key", key, "--algorithm", "ECDSA_SHA_256", "--in", str(msg)], check=False)
    assert wrong.returncode != 0 and b"not compatible" in wrong.stderr
    big = tmp_path / "big"
    big.write_bytes(b"x" * 4097)
    too_big = api.keystore.run(["sign", "--key", key, "--algorithm", "RSASSA_PSS_SHA_384", "--in", str(big)], check=False)
    assert too_big.returncode != 0 and b"4096" in too_big.stderr
    events = api.keystore.audit("--key", key)
    assert {"Sign", "Verify"} <= {e["Operation"] for e in events}
