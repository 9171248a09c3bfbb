"""Imported key material (Origin EXTERNAL): CreateKey, GetParametersForImport (every wrapping
algorithm and wrapping key size), the material wrapped by the openssl CLI (pkeyutl for
RSA-OAEP, `enc -id-aes256-wrap-pad` for RSA_AES_KEY_WRAP) and imported, the key's state on
the way (PendingImport, Enabled), DeleteImportedKeyMaterial and re-import (old ciphertexts
decrypt again), expiry (ValidTo passing: without any commit on the data plane, and through a
clock-shifted server), rotation of imported keys, and AWS's errors for every wrong input,
with nothing changed by a refused call. The README's manual flow is run as written."""

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from kmsapi import REPO, Keystore, Server, assert_enums, kmsfs_test_clock_bin, raises_code

ALGORITHMS = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"]
DAY = 86400


def run(args, **kw):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, **kw)


def openssl_wrap(tmp, public_der, material, algorithm):
    """`material` wrapped for the public key with the openssl CLI, as an operator does it."""
    tmp.mkdir(parents=True, exist_ok=True)
    pub = tmp / "wrapping.der"
    pub.write_bytes(public_der)
    md = "sha1" if algorithm.endswith("SHA_1") else "sha256"

    def oaep(infile, outfile):
        run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", pub, "-keyform", "DER",
             "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}",
             "-pkeyopt", f"rsa_mgf1_md:{md}", "-in", infile, "-out", outfile])
        return outfile.read_bytes()

    mat = tmp / "material.bin"
    mat.write_bytes(material)
    if algorithm.startswith("RSAES_OAEP"):
        return oaep(mat, tmp / "wrapped.bin")
    aes = tmp / "aes.key"
    aes.write_bytes(os.urandom(32))
    run(["openssl", "enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", aes.read_bytes().hex(),
         "-in", mat, "-out", tmp / "material.kwp"])
    return oaep(aes, tmp / "aes.wrapped") + (tmp / "material.kwp").read_bytes()


def external_key(api, client=None, **kw):
    return api.new_key("imported", client=client, Origin="EXTERNAL", **kw)


def import_material(client, key_id, material, tmp, algorithm="RSAES_OAEP_SHA_256", spec="RSA_2048", **kw):
    params = client.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec)
    wrapped = openssl_wrap(tmp, params["PublicKey"], material, algorithm)
    kw.setdefault("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return client.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                                      EncryptedKeyMaterial=wrapped, **kw)


def state(client, key_id):
    return client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]


def test_an_external_key_is_pending_import_and_unusable(api, kms_model):
    meta = api.alice.create_key(Description="byok", Origin="EXTERNAL")["KeyMetadata"]
    assert_enums(kms_model, "CreateKey", {"KeyMetadata": meta})
    assert (meta["KeyState"], meta["Origin"], meta["KeyManager"], meta["Enabled"]) == \
        ("PendingImport", "EXTERNAL", "CUSTOMER", False)
    described = api.alice.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]
    assert described["Origin"] == "EXTERNAL" and described["KeyState"] == "PendingImport"
    for call in (lambda: api.alice.encrypt(KeyId=meta["KeyId"], Plaintext=b"x"),
                 lambda: api.alice.generate_data_key(KeyId=meta["KeyId"], KeySpec="AES_256"),
                 lambda: api.alice.enable_key(KeyId=meta["KeyId"]),
                 lambda: api.alice.delete_imported_key_material(KeyId=meta["KeyId"])):
        with raises_code("KMSInvalidStateException"):
            call()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_material_wrapped_by_openssl_imports_and_the_key_works(api, tmp_path, kms_model, algorithm):
    key_id = external_key(api)
    params = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec="RSA_2048")
    assert_enums(kms_model, "GetParametersForImport", params)
    now = time.time()
    assert abs(params["ParametersValidTo"].timestamp() - (now + DAY)) < 120
    assert params["KeyId"].endswith(key_id)
    material = os.urandom(32)
    wrapped = openssl_wrap(tmp_path, params["PublicKey"], material, algorithm)
    out = api.alice.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped,
                                        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert re.fullmatch(r"[0-9a-f]{64}", out["KeyMaterialId"])
    meta = api.alice.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"], meta["ExpirationModel"]) == ("Enabled", True, "KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert meta["CurrentKeyMaterialId"] == out["KeyMaterialId"] and "ValidTo" not in meta
    blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"brought my own key")["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"brought my own key"
    # The material's id does not reveal it.
    assert material.hex() not in json.dumps(meta, default=str) and hashlib.sha256(material).hexdigest() != out["KeyMaterialId"]


@pytest.mark.parametrize("spec,bits", [("RSA_2048", 2048), ("RSA_3072", 3072), ("RSA_4096", 4096)])
def test_each_wrapping_key_is_fresh_and_of_its_size(api, spec, bits):
    key_id = external_key(api)
    a = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec=spec)
    b = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec=spec)
    assert serialization.load_der_public_key(a["PublicKey"]).key_size == bits
    assert a["PublicKey"] != b["PublicKey"] and a["ImportToken"] != b["ImportToken"]


def test_the_material_is_the_one_imported_hmac(api, tmp_path):
    """An HMAC key's MACs, computed here with the material, prove the bytes arrived intact."""
    key_id = external_key(api, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    material = os.urandom(32)
    import_material(api.alice, key_id, material, tmp_path, algorithm="RSA_AES_KEY_WRAP_SHA_256")
    mac = api.alice.generate_mac(KeyId=key_id, Message=b"msg", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert mac == hmac.new(material, b"msg", hashlib.sha256).digest()
    # Its material never changes.
    with raises_code("IncorrectKeyMaterialException"):
        import_material(api.alice, key_id, os.urandom(32), tmp_path / "2", ImportType="NEW_KEY_MATERIAL")


def test_an_asymmetric_key_imports_its_pkcs8_private_key(api, tmp_path):
    """RSA_AES_KEY_WRAP carries a PKCS#8 private key; the key's public key and signatures are
    then those of the imported key, and a key of another curve is refused."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key_id = external_key(api, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with raises_code("IncorrectKeyMaterialException"):
        import_material(api.alice, key_id, other_curve, tmp_path / "2", algorithm="RSA_AES_KEY_WRAP_SHA_256")
    import_material(api.alice, key_id, der, tmp_path / "3", algorithm="RSA_AES_KEY_WRAP_SHA_256")
    public = api.alice.get_public_key(KeyId=key_id)["PublicKey"]
    assert public == private.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = api.alice.sign(KeyId=key_id, Message=b"signed", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    private.public_key().verify(signature, b"signed", ec.ECDSA(hashes.SHA256()))


def test_delete_and_reimport_restore_every_old_ciphertext(api, tmp_path, kms_model):
    key_id = external_key(api)
    material = os.urandom(32)
    params = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    wrapped = openssl_wrap(tmp_path / "1", params["PublicKey"], material, "RSAES_OAEP_SHA_256")
    request = dict(KeyId=key_id, ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped,
                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    first = api.alice.import_key_material(**request)["KeyMaterialId"]
    # Parameters fetched before a deletion are void after it.
    outstanding = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                                      WrappingKeySpec="RSA_2048")
    blobs = [api.alice.encrypt(KeyId=key_id, Plaintext=f"secret {i}".encode())["CiphertextBlob"] for i in range(3)]
    deleted = api.alice.delete_imported_key_material(KeyId=key_id)
    assert deleted["KeyMaterialId"] == first
    assert state(api.alice, key_id) == "PendingImport"
    with raises_code("KMSInvalidStateException"):
        api.alice.decrypt(CiphertextBlob=blobs[0])
    # A token serves one import: the captured request does not bring the material back.
    with raises_code("InvalidImportTokenException"):
        api.alice.import_key_material(**request)
    with raises_code("InvalidImportTokenException"):
        api.alice.import_key_material(**dict(request, ImportToken=outstanding["ImportToken"],
                                             EncryptedKeyMaterial=openssl_wrap(tmp_path / "o", outstanding["PublicKey"],
                                                                               material, "RSAES_OAEP_SHA_256")))
    rotations = api.alice.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert_enums(kms_model, "ListKeyRotations", {"Rotations": rotations})
    assert [(r["KeyMaterialId"], r["ImportState"], r["KeyMaterialState"]) for r in rotations] == \
        [(first, "PENDING_IMPORT", "CURRENT")]
    again = import_material(api.alice, key_id, material, tmp_path / "2", algorithm="RSA_AES_KEY_WRAP_SHA_1")
    assert again["KeyMaterialId"] == first and state(api.alice, key_id) == "Enabled"
    assert [api.alice.decrypt(CiphertextBlob=b)["Plaintext"] for b in blobs] == [f"secret {i}".encode() for i in range(3)]


def test_different_material_is_incorrect_and_changes_nothing(api, tmp_path):
    key_id = external_key(api)
    import_material(api.alice, key_id, os.urandom(32), tmp_path / "1")
    blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"kept")["CiphertextBlob"]
    with raises_code("IncorrectKeyMaterialException"):
        import_material(api.alice, key_id, os.urandom(32), tmp_path / "2")
    api.alice.delete_imported_key_material(KeyId=key_id)
    with raises_code("IncorrectKeyMaterialException"):
        import_material(api.alice, key_id, os.urandom(32), tmp_path / "3", ImportType="EXISTING_KEY_MATERIAL")
    assert state(api.alice, key_id) == "PendingImport"
    with raises_code("IncorrectKeyMaterialException"):
        import_material(api.alice, key_id, os.urandom(16), tmp_path / "4")
    # The first import of the wrong length is refused too, and leaves the key without material.
    other = external_key(api)
    with raises_code("IncorrectKeyMaterialException"):
        import_material(api.alice, other, os.urandom(16), tmp_path / "5")
    assert state(api.alice, other) == "PendingImport"
    assert api.alice.list_key_rotations(KeyId=other, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"] == []
    with raises_code("KMSInvalidStateException"):
        api.alice.decrypt(CiphertextBlob=blob)


def test_foreign_altered_and_misdirected_tokens_are_invalid(api, tmp_path):
    key_id, other = external_key(api), external_key(api)
    material = os.urandom(32)
    params = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    wrapped = openssl_wrap(tmp_path, params["PublicKey"], material, "RSAES_OAEP_SHA_256")
    args = dict(EncryptedKeyMaterial=wrapped, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    altered = bytearray(params["ImportToken"])
    altered[len(altered) // 2] ^= 1
    with raises_code("InvalidImportTokenException"):
        api.alice.import_key_material(KeyId=key_id, ImportToken=bytes(altered), **args)
    with raises_code("InvalidImportTokenException"):
        api.alice.import_key_material(KeyId=other, ImportToken=params["ImportToken"], **args)
    with raises_code("InvalidImportTokenException"):
        api.alice.import_key_material(KeyId=key_id, ImportToken=os.urandom(200), **args)
    # A token of another keystore (another root key) for a key of the same id cannot exist;
    # one for its own key there is refused here.
    ks = Keystore()
    try:
        server = Server(ks)
        try:
            foreign_client = server.client(ks.access_key("alice"))
            foreign_key = foreign_client.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
            foreign = foreign_client.get_parameters_for_import(
                KeyId=foreign_key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
            foreign_wrapped = openssl_wrap(tmp_path / "f", foreign["PublicKey"], material, "RSAES_OAEP_SHA_256")
            with raises_code("InvalidImportTokenException"):
                api.alice.import_key_material(KeyId=key_id, ImportToken=foreign["ImportToken"],
                                              EncryptedKeyMaterial=foreign_wrapped,
                                              ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        finally:
            server.stop()
    finally:
        ks.cleanup()
    # Material wrapped for another wrapping key than the token's.
    second = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    with raises_code("InvalidCiphertextException"):
        api.alice.import_key_material(KeyId=key_id, ImportToken=second["ImportToken"], **args)
    with raises_code("InvalidCiphertextException"):
        api.alice.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                                      EncryptedKeyMaterial=os.urandom(256), ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert state(api.alice, key_id) == "PendingImport"
    api.alice.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"], **args)
    assert state(api.alice, key_id) == "Enabled"


def clock_shifted(api, args, offset_secs):
    """`kmsfs-test-clock ARGS` on the server's keystore with the KMS clock moved ahead (the
    server's own requests are signed at the real time, so it keeps the real clock)."""
    env = dict(api.keystore.env(), KMSFS_CLOCK_OFFSET_SECS=str(offset_secs))
    return subprocess.run([kmsfs_test_clock_bin(), *map(str, args)], env=env, capture_output=True, timeout=60)


def test_an_import_token_expires_after_24_hours(api, tmp_path):
    key_id = external_key(api)
    params = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_1", WrappingKeySpec="RSA_2048")
    wrapped = openssl_wrap(tmp_path, params["PublicKey"], os.urandom(32), "RSAES_OAEP_SHA_1")
    (tmp_path / "token.bin").write_bytes(params["ImportToken"])
    (tmp_path / "wrapped.bin").write_bytes(wrapped)
    args = ["key", "import-material", key_id, "--encrypted-material", tmp_path / "wrapped.bin",
            "--import-token", tmp_path / "token.bin", "--no-expiry"]
    late = clock_shifted(api, args, DAY + 60)
    assert late.returncode != 0 and b"import token expired" in late.stderr, late.stderr
    events = api.keystore.audit("--key", key_id)
    assert events[-1]["Operation"] == "ImportKeyMaterial" and events[-1]["ErrorCode"] == "ExpiredImportTokenException", events[-1]
    assert state(api.alice, key_id) == "PendingImport"
    # Within the 24 hours the same token works.
    in_time = clock_shifted(api, args, DAY - 600)
    assert in_time.returncode == 0, in_time.stderr
    assert state(api.alice, key_id) == "Enabled"


def test_valid_to_must_be_ahead_and_within_365_days(api, tmp_path):
    key_id = external_key(api)
    params = api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    wrapped = openssl_wrap(tmp_path, params["PublicKey"], os.urandom(32), "RSAES_OAEP_SHA_256")
    base = dict(KeyId=key_id, ImportToken=params["ImportToken"], EncryptedKeyMaterial=wrapped)
    now = int(time.time())
    for extra, words in [
        ({}, "ValidTo is required"),
        ({"ExpirationModel": "KEY_MATERIAL_EXPIRES"}, "ValidTo is required"),
        ({"ValidTo": now - 60}, "future"),
        ({"ValidTo": now + 366 * DAY}, "365 days"),
        ({"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ValidTo": now + DAY}, "must not be set"),
    ]:
        with raises_code("ValidationException") as refused:
            api.alice.import_key_material(**base, **extra)
        assert words in refused.message, (extra, refused.message)
    assert state(api.alice, key_id) == "PendingImport"
    api.alice.import_key_material(**base, ValidTo=now + 364 * DAY)
    meta = api.alice.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs(meta["ValidTo"].timestamp() - (now + 364 * DAY)) < 2


def test_expired_material_makes_the_key_pending_import_at_once(api, tmp_path):
    """Nothing is committed when ValidTo passes: the data plane's key ring refuses by the
    clock, and the next control-plane call deletes the material."""
    key_id = external_key(api)
    material = os.urandom(32)
    import_material(api.alice, key_id, material, tmp_path / "1", ExpirationModel="KEY_MATERIAL_EXPIRES",
                    ValidTo=int(time.time()) + 3)
    blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"short-lived")["CiphertextBlob"]
    time.sleep(4)
    with raises_code("KMSInvalidStateException"):
        api.alice.decrypt(CiphertextBlob=blob)
    with raises_code("KMSInvalidStateException"):
        api.alice.encrypt(KeyId=key_id, Plaintext=b"x")
    assert state(api.alice, key_id) == "PendingImport"
    events = api.keystore.audit("--key", key_id)
    assert any(e["Operation"] == "DeleteImportedKeyMaterial" and "expired" in e["Reason"] for e in events), events
    import_material(api.alice, key_id, material, tmp_path / "2")
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"short-lived"


def test_expiry_seen_through_the_test_clock(api, tmp_path):
    key_id = external_key(api)
    material = os.urandom(32)
    import_material(api.alice, key_id, material, tmp_path / "1", ExpirationModel="KEY_MATERIAL_EXPIRES",
                    ValidTo=int(time.time()) + DAY)
    blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"a day")["CiphertextBlob"]
    # A day and a bit later, opening the keystore deletes the material.
    later = clock_shifted(api, ["key", "describe", key_id, "--json"], DAY + 60)
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout)["KeyState"] == "PendingImport"
    # For everyone, not only for the later clock: the server refuses at once.
    with raises_code("KMSInvalidStateException"):
        api.alice.decrypt(CiphertextBlob=blob)
    assert state(api.alice, key_id) == "PendingImport"
    import_material(api.alice, key_id, material, tmp_path / "2")
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"a day"


def test_imported_keys_rotate_only_on_demand_after_new_material(api, tmp_path, kms_model):
    key_id = external_key(api)
    first_material, second_material = os.urandom(32), os.urandom(32)
    first = import_material(api.alice, key_id, first_material, tmp_path / "1")["KeyMaterialId"]
    old_blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"before rotation")["CiphertextBlob"]
    with raises_code("UnsupportedOperationException"):
        api.alice.enable_key_rotation(KeyId=key_id)
    with raises_code("UnsupportedOperationException"):
        api.alice.rotate_key_on_demand(KeyId=key_id)
    assert api.alice.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    second = import_material(api.alice, key_id, second_material, tmp_path / "2",
                             ImportType="NEW_KEY_MATERIAL", KeyMaterialDescription="second")["KeyMaterialId"]
    assert second != first
    pending = api.alice.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert [(r["KeyMaterialId"], r["KeyMaterialState"]) for r in pending] == [(first, "CURRENT"), (second, "PENDING_ROTATION")]
    assert api.alice.list_key_rotations(KeyId=key_id)["Rotations"] == []
    with raises_code("KMSInvalidStateException"):
        import_material(api.alice, key_id, os.urandom(32), tmp_path / "3", ImportType="NEW_KEY_MATERIAL")
    # Until the rotation, encryption stays with the first material.
    assert api.alice.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == first
    api.alice.rotate_key_on_demand(KeyId=key_id)
    rotations = api.alice.list_key_rotations(KeyId=key_id)["Rotations"]
    assert_enums(kms_model, "ListKeyRotations", {"Rotations": rotations})
    assert [(r["KeyMaterialId"], r["KeyMaterialState"], r["RotationType"], r["KeyMaterialDescription"]) for r in rotations] == \
        [(second, "CURRENT", "ON_DEMAND", "second")]
    assert api.alice.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == second
    assert api.alice.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"before rotation"
    new_blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
    # Deleting the older material makes the key pending import, re-importing it heals it.
    api.alice.delete_imported_key_material(KeyId=key_id, KeyMaterialId=first)
    assert state(api.alice, key_id) == "PendingImport"
    import_material(api.alice, key_id, first_material, tmp_path / "4", KeyMaterialId=first)
    assert api.alice.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"before rotation"
    assert api.alice.decrypt(CiphertextBlob=new_blob)["Plaintext"] == b"after"


def test_import_operations_need_an_external_key(api, key):
    with raises_code("UnsupportedOperationException"):
        api.alice.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    with raises_code("UnsupportedOperationException"):
        api.alice.delete_imported_key_material(KeyId=key)
    with raises_code("UnsupportedOperationException"):
        api.alice.import_key_material(KeyId=key, ImportToken=b"x" * 64, EncryptedKeyMaterial=b"y" * 256,
                                      ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    external = external_key(api)
    with raises_code("UnsupportedOperationException"):
        api.alice.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSAES_PKCS1_V1_5", WrappingKeySpec="RSA_2048")
    with raises_code("UnsupportedOperationException"):
        api.alice.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="SM2")
    with raises_code("ValidationException"):
        api.alice_raw.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSA_OAEP", WrappingKeySpec="RSA_2048")
    with raises_code("NotFoundException"):
        api.alice.get_parameters_for_import(KeyId="alias/nope", WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    # Another user, without the key policy's leave, gets nothing.
    with raises_code("AccessDeniedException"):
        api.bob.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")


def test_a_key_pending_deletion_takes_no_import_and_cancel_returns_it_pending_import(api, tmp_path):
    key_id = external_key(api)
    api.alice.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with raises_code("KMSInvalidStateException"):
        api.alice.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    api.alice.cancel_key_deletion(KeyId=key_id)
    assert state(api.alice, key_id) == "PendingImport"
    import_material(api.alice, key_id, os.urandom(32), tmp_path)
    api.alice.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    api.alice.cancel_key_deletion(KeyId=key_id)
    assert state(api.alice, key_id) == "Disabled"


def readme_manual_flow():
    """The shell block of the README's manual import flow."""
    text = (REPO / "README.md").read_text()
    section = text.split("<!-- key-import-manual-flow -->", 2)
    assert len(section) == 3, "README.md lost its key-import-manual-flow block"
    block = re.search(r"```sh\n(.*?)```", section[1], re.S)
    return block.group(1)


def test_the_readme_manual_flow_runs_as_written(api, tmp_path):
    script = readme_manual_flow()
    assert "openssl pkeyutl -encrypt -pubin -inkey wrapping.der -keyform DER -pkeyopt rsa_padding_mode:oaep" in script
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "aws").write_text(f"#!/bin/sh\nexec {os.sys.executable} -m awscli --endpoint-url {api.endpoint} \"$@\"\n")
    (shim / "aws").chmod(0o755)
    creds = api.creds["alice"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PATH=f"{shim}:{env['PATH']}", AWS_ACCESS_KEY_ID=creds["AccessKeyId"],
               AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"], AWS_DEFAULT_REGION="eu-west-1",
               AWS_CONFIG_FILE=os.environ["AWS_CONFIG_FILE"], AWS_SHARED_CREDENTIALS_FILE=os.environ["AWS_SHARED_CREDENTIALS_FILE"],
               AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="")
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key_id = (work / "key-id.txt").read_text().strip()
    meta = api.alice.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["Origin"], meta["KeyState"]) == ("EXTERNAL", "Enabled")
    blob = api.alice.encrypt(KeyId=key_id, Plaintext=b"readme")["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"readme"
