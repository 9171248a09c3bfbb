"""The server, the kmsfs CLI and a mount on one keystore: a key disabled with the CLI is
refused by the API at once; a key disabled through the API is refused by the mount at its
next open, and enabling it restores access without a remount."""

import errno
import json
import os
import subprocess
import time

import pytest

from kmsapi import key_arn, kmsfs_bin, raises_code, user_arn


def shared_policy():
    """Root (the mount and the CLI run as uid 0) and alice (over the API) both administer."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "root", "Effect": "Allow", "Principal": {"Uid": [0]}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "alice", "Effect": "Allow", "Principal": {"AWS": user_arn("alice")}, "Action": "kms:*", "Resource": "*"},
    ]})


@pytest.fixture
def cli_key(api):
    """A key made with `kmsfs key create` whose policy also names alice."""
    alias = f"alias/shared-{time.monotonic_ns()}"
    key = api.keystore.run(["key", "create", "--alias", alias]).stdout.decode().strip().splitlines()[-1].strip()
    path = api.keystore.dir / f"{alias.split('/')[1]}.json"
    path.write_text(shared_policy())
    api.keystore.run(["policy", "put", alias, str(path)])
    return key, alias


def test_keys_visible_both_ways(api, cli_key):
    key, alias = cli_key
    assert api.alice.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == key
    api_key = api.new_key("made over the api")
    listed = api.keystore.json(["key", "list"])
    ids = {k["KeyId"] for k in (listed if isinstance(listed, list) else listed.get("Keys", []))}
    assert api_key in ids and key in ids


def test_cli_disable_refused_by_api_at_once(api, cli_key):
    key, alias = cli_key
    blob = api.alice.encrypt(KeyId=alias, Plaintext=b"shared")["CiphertextBlob"]
    api.keystore.run(["key", "disable", alias])
    with raises_code("DisabledException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("DisabledException"):
        api.alice.decrypt(CiphertextBlob=blob)
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    api.keystore.run(["key", "enable", alias])
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"shared"


def test_cli_decrypts_what_api_encrypted(api, cli_key):
    key, alias = cli_key
    blob = api.alice.encrypt(KeyId=alias, Plaintext=b"interop", EncryptionContext={"app": "x"})["CiphertextBlob"]
    out = api.keystore.run(["decrypt", "--context", "app=x"], input=blob)
    assert out.stdout == b"interop"
    cli_blob = api.keystore.run(["encrypt", "--key", alias, "--context", "app=y"], input=b"from cli").stdout
    assert api.alice.decrypt(CiphertextBlob=cli_blob, EncryptionContext={"app": "y"})["Plaintext"] == b"from cli"


class Mount:
    """`kmsfs mount -f` as a child process, stopped by PID and unmounted on close."""

    def __init__(self, api, cipher, mnt):
        self.mnt = mnt
        self.log = api.keystore.dir / "mount.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([kmsfs_bin(), "mount", "-f", str(cipher), str(mnt)],
                                         env=api.keystore.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"mount failed:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.02)

    def close(self):
        for args in (["-u"], ["-uz"]):
            if os.path.ismount(self.mnt):
                subprocess.run(["fusermount3", *args, str(self.mnt)], capture_output=True)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_mount_and_server_share_keystore(api, cli_key):
    key, alias = cli_key
    cipher, mnt = api.keystore.dir / "vol.enc", api.keystore.dir / "vol"
    api.keystore.run(["volume", "init", str(cipher), "--key", alias])
    mnt.mkdir()
    m = Mount(api, cipher, mnt)
    try:
        (mnt / "note.txt").write_text("mounted and served")
        assert (mnt / "note.txt").read_text() == "mounted and served"

        api.alice.disable_key(KeyId=key_arn(key))
        with pytest.raises(OSError) as e:
            with open(mnt / "note.txt") as f:
                f.read()
        assert e.value.errno == errno.ENOKEY, e.value

        api.alice.enable_key(KeyId=key)
        assert (mnt / "note.txt").read_text() == "mounted and served"

        # The mount's use of the key is in the same audit trail as the API's.
        ops = {(e.get("Operation"), e.get("Outcome")) for e in api.keystore.audit("--key", key)}
        assert ("DisableKey", "Success") in ops and ("EnableKey", "Success") in ops
    finally:
        m.close()
