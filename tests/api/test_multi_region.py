"""Multi-Region keys through boto3 and the aws CLI: two keystores as two regions of one
account, each served by `kmsfs serve --peer` naming the other. CreateKey MultiRegion,
ReplicateKey, DescribeKey's MultiRegionConfiguration, ciphertexts crossing regions, rotation
reaching the replica through the servers' own sync, UpdatePrimaryRegion, the deletion states
(PendingReplicaDeletion), and AWS's errors with nothing half-written."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.config import Config

from kmsapi import (ACCOUNT, FAST_ARGON2, PASSPHRASE, REGION, Keystore, Server, kmsfs_bin, kmsfs_test_clock_bin,
                    raises_code)

EAST = REGION  # eu-west-1, the suite's region
WEST = "us-west-2"
DAY = 86_400


class RegionKeystore(Keystore):
    """A temp keystore of ACCOUNT in `region`."""

    def __init__(self, region):
        self.dir = Path(tempfile.mkdtemp(prefix="kmsfs-api-mrk-"))
        self.path = self.dir / "keystore.db"
        self.region = region
        self.run(["keystore", "init", "--account-id", ACCOUNT, "--region", region, *FAST_ARGON2])


def client(server, creds, region):
    cfg = Config(region_name=region, retries={"total_max_attempts": 1, "mode": "standard"},
                 connect_timeout=5, read_timeout=20)
    session = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        region_name=region, botocore_session=botocore.session.Session())
    return session.client("kms", endpoint_url=server.endpoint, config=cfg)


def serve(keystore, peer):
    env = keystore.env()
    env["KMSFS_REPLICA_PASSPHRASE"] = PASSPHRASE
    return Server(keystore, extra_args=["--peer", f"{peer.region}={peer.path}", "--peer-sync-interval", "1"],
                  env=env)


class Regions:
    def __init__(self, request):
        self.east_ks, self.west_ks = RegionKeystore(EAST), RegionKeystore(WEST)
        for ks in (self.east_ks, self.west_ks):
            request.addfinalizer(ks.cleanup)
        self.east_server = serve(self.east_ks, self.west_ks)
        request.addfinalizer(self.east_server.stop)
        self.west_server = serve(self.west_ks, self.east_ks)
        request.addfinalizer(self.west_server.stop)
        # alice in both regions: one IAM user of the account, an access key in each.
        self.east_creds = self.east_ks.access_key("alice")
        self.west_creds = self.west_ks.access_key("alice")
        self.east = client(self.east_server, self.east_creds, EAST)
        self.west = client(self.west_server, self.west_creds, WEST)

    def arn(self, region, key_id):
        return f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"

    def mrk(self, **kw):
        return self.east.create_key(MultiRegion=True, Description="mrk", **kw)["KeyMetadata"]["KeyId"]

    def aws(self, region, *args, check=True):
        creds, server = (self.east_creds, self.east_server) if region == EAST else (self.west_creds, self.west_server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=creds["AccessKeyId"], AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
                   AWS_DEFAULT_REGION=region, AWS_CONFIG_FILE=os.environ["AWS_CONFIG_FILE"],
                   AWS_SHARED_CREDENTIALS_FILE=os.environ["AWS_SHARED_CREDENTIALS_FILE"],
                   AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1", AWS_PAGER="")
        out = subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url", server.endpoint, "--output", "json",
                              *args], env=env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
        return out


@pytest.fixture(scope="module")
def regions(request):
    return Regions(request)


def wait_for(what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what.__doc__ or what}")


def key_ids(c):
    return {k["KeyId"] for k in c.list_keys()["Keys"]}


def test_create_key_multi_region_has_an_mrk_id_and_a_primary_configuration(regions):
    meta = regions.east.create_key(MultiRegion=True)["KeyMetadata"]
    key_id = meta["KeyId"]
    assert key_id.startswith("mrk-") and len(key_id) == 36 and int(key_id[4:], 16) >= 0
    assert meta["MultiRegion"] is True
    assert meta["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "PRIMARY",
        "PrimaryKey": {"Arn": regions.arn(EAST, key_id), "Region": EAST},
        "ReplicaKeys": [],
    }
    single = regions.east.create_key()["KeyMetadata"]
    assert single["MultiRegion"] is False and "MultiRegionConfiguration" not in single
    # Multi-Region keys with imported material are not built: refused, nothing created.
    before = key_ids(regions.east)
    with raises_code("UnsupportedOperationException"):
        regions.east.create_key(MultiRegion=True, Origin="EXTERNAL")
    assert key_ids(regions.east) == before


def test_replicate_key_makes_a_replica_that_decrypts_what_the_primary_encrypted(regions):
    key_id = regions.mrk()
    out = regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST, Description="the west copy",
                                     Tags=[{"TagKey": "team", "TagValue": "ops"}])
    replica = out["ReplicaKeyMetadata"]
    assert replica["KeyId"] == key_id
    assert replica["Arn"] == regions.arn(WEST, key_id)
    assert replica["Description"] == "the west copy"
    assert replica["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    assert out["ReplicaTags"] == [{"TagKey": "team", "TagValue": "ops"}]
    assert json.loads(out["ReplicaPolicy"])["Statement"]

    primary = regions.east.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    assert primary["ReplicaKeys"] == [{"Arn": regions.arn(WEST, key_id), "Region": WEST}]
    seen_west = regions.west.describe_key(KeyId=key_id)["KeyMetadata"]
    assert seen_west["MultiRegionConfiguration"]["PrimaryKey"] == {"Arn": regions.arn(EAST, key_id), "Region": EAST}
    assert seen_west["KeyState"] == "Enabled"

    ctx = {"purpose": "cross-region"}
    blob = regions.east.encrypt(KeyId=key_id, Plaintext=b"from the east", EncryptionContext=ctx)["CiphertextBlob"]
    out = regions.west.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
    assert out["Plaintext"] == b"from the east"
    assert out["KeyId"] == regions.arn(WEST, key_id)
    with raises_code("InvalidCiphertextException"):
        regions.west.decrypt(CiphertextBlob=blob, EncryptionContext={"purpose": "other"})
    dk = regions.west.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert regions.east.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    # Aliases, tags and policy are each member's own.
    regions.west.create_alias(AliasName="alias/west-only", TargetKeyId=key_id)
    with raises_code("NotFoundException"):
        regions.east.describe_key(KeyId="alias/west-only")
    assert regions.east.list_resource_tags(KeyId=key_id)["Tags"] == []


def test_replicate_key_through_the_aws_cli(regions):
    key_id = regions.mrk()
    out = json.loads(regions.aws(EAST, "kms", "replicate-key", "--key-id", key_id, "--replica-region", WEST).stdout)
    assert out["ReplicaKeyMetadata"]["Arn"] == regions.arn(WEST, key_id)
    described = json.loads(regions.aws(WEST, "kms", "describe-key", "--key-id", key_id).stdout)
    assert described["KeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    again = regions.aws(EAST, "kms", "replicate-key", "--key-id", key_id, "--replica-region", WEST, check=False)
    assert again.returncode != 0 and "AlreadyExistsException" in again.stderr, again.stderr


def test_replicate_key_errors_leave_nothing_half_written(regions):
    single = regions.east.create_key()["KeyMetadata"]["KeyId"]
    with raises_code("UnsupportedOperationException"):
        regions.east.replicate_key(KeyId=single, ReplicaRegion=WEST)
    key_id = regions.mrk()
    with raises_code("UnsupportedOperationException") as e:
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion="ap-south-1")
    assert "ap-south-1" in e.message
    with raises_code("ValidationException"):
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion=EAST)
    with raises_code("ValidationException"):
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion="not a region")
    with raises_code("NotFoundException"):
        regions.east.replicate_key(KeyId="mrk-00000000000000000000000000000000", ReplicaRegion=WEST)
    with raises_code("MalformedPolicyDocumentException"):
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST, Policy='{"Statement": 3}')
    with raises_code("TagException"):
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST, Tags=[{"TagKey": "aws:x", "TagValue": "y"}])
    # Fails after the replica's key row and versions were written (the 51st tag): no half key.
    many = [{"TagKey": f"t{i}", "TagValue": "v"} for i in range(51)]
    with raises_code("LimitExceededException"):
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST, Tags=many[:50] + many[50:])
    assert key_id not in key_ids(regions.west)
    with raises_code("NotFoundException"):
        regions.west.describe_key(KeyId=key_id)
    assert regions.east.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["ReplicaKeys"] == []

    regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST)
    with raises_code("AlreadyExistsException"):
        regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST)
    with raises_code("UnsupportedOperationException"):
        regions.west.replicate_key(KeyId=key_id, ReplicaRegion=EAST)
    # A key pending deletion does not replicate.
    doomed = regions.mrk()
    regions.east.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    with raises_code("KMSInvalidStateException"):
        regions.east.replicate_key(KeyId=doomed, ReplicaRegion=WEST)
    assert doomed not in key_ids(regions.west)


def test_single_region_keys_stay_regional(regions):
    key_id = regions.east.create_key()["KeyMetadata"]["KeyId"]
    blob = regions.east.encrypt(KeyId=key_id, Plaintext=b"regional")["CiphertextBlob"]
    with raises_code("NotFoundException"):
        regions.west.describe_key(KeyId=key_id)
    with raises_code("NotFoundException"):
        regions.west.decrypt(CiphertextBlob=blob)
    # Nor does an mrk's east ARN name the west replica: ARNs are regional.
    mrk = regions.mrk()
    regions.east.replicate_key(KeyId=mrk, ReplicaRegion=WEST)
    with raises_code("NotFoundException"):
        regions.west.describe_key(KeyId=regions.arn(EAST, mrk))
    assert regions.west.describe_key(KeyId=regions.arn(WEST, mrk))["KeyMetadata"]["KeyId"] == mrk


def test_rotation_of_the_primary_reaches_the_replica_through_the_servers_sync(regions):
    key_id = regions.mrk()
    regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST)
    regions.east.rotate_key_on_demand(KeyId=key_id)
    blob = regions.east.encrypt(KeyId=key_id, Plaintext=b"version two")["CiphertextBlob"]

    def rotated_in_the_west():
        return len(regions.west.list_key_rotations(KeyId=key_id)["Rotations"]) == 1

    wait_for(rotated_in_the_west)
    assert regions.west.decrypt(CiphertextBlob=blob)["Plaintext"] == b"version two"
    with raises_code("UnsupportedOperationException"):
        regions.west.rotate_key_on_demand(KeyId=key_id)
    with raises_code("UnsupportedOperationException"):
        regions.west.enable_key_rotation(KeyId=key_id)
    regions.east.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=180)
    wait_for(lambda: regions.west.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"])
    assert regions.west.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 180


def test_update_primary_region_switches_both_configurations(regions):
    key_id = regions.mrk()
    lonely = regions.mrk()
    with raises_code("NotFoundException"):
        regions.east.update_primary_region(KeyId=lonely, PrimaryRegion=WEST)
    single = regions.east.create_key()["KeyMetadata"]["KeyId"]
    with raises_code("UnsupportedOperationException"):
        regions.east.update_primary_region(KeyId=single, PrimaryRegion=WEST)
    with raises_code("UnsupportedOperationException"):
        regions.east.update_primary_region(KeyId=key_id, PrimaryRegion="ap-south-1")
    regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST)

    regions.east.update_primary_region(KeyId=key_id, PrimaryRegion=WEST)
    east = regions.east.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    west = regions.west.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    assert east["MultiRegionKeyType"] == "REPLICA" and west["MultiRegionKeyType"] == "PRIMARY"
    for cfg in (east, west):
        assert cfg["PrimaryKey"] == {"Arn": regions.arn(WEST, key_id), "Region": WEST}
        assert cfg["ReplicaKeys"] == [{"Arn": regions.arn(EAST, key_id), "Region": EAST}]
    with raises_code("UnsupportedOperationException"):
        regions.east.update_primary_region(KeyId=key_id, PrimaryRegion=WEST)
    with raises_code("ValidationException"):
        regions.west.update_primary_region(KeyId=key_id, PrimaryRegion=WEST)
    # The new primary rotates; the old one receives it at the next sync.
    regions.west.rotate_key_on_demand(KeyId=key_id)
    with raises_code("UnsupportedOperationException"):
        regions.east.rotate_key_on_demand(KeyId=key_id)
    wait_for(lambda: len(regions.east.list_key_rotations(KeyId=key_id)["Rotations"]) == 1)
    # And back.
    regions.west.update_primary_region(KeyId=key_id, PrimaryRegion=EAST)
    assert regions.east.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"] \
        == "PRIMARY"


def test_deleting_a_primary_with_replicas_waits_in_pending_replica_deletion(regions):
    key_id = regions.mrk()
    regions.east.replicate_key(KeyId=key_id, ReplicaRegion=WEST)
    out = regions.east.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingReplicaDeletion"
    assert "DeletionDate" not in out
    assert out["PendingWindowInDays"] == 7
    meta = regions.east.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "PendingReplicaDeletion"
    assert meta["PendingDeletionWindowInDays"] == 7 and "DeletionDate" not in meta
    with raises_code("KMSInvalidStateException"):
        regions.east.encrypt(KeyId=key_id, Plaintext=b"x")
    with raises_code("KMSInvalidStateException"):
        regions.east.schedule_key_deletion(KeyId=key_id)
    regions.east.cancel_key_deletion(KeyId=key_id)
    assert regions.east.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    regions.east.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    # The replica is scheduled normally...
    out = regions.west.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingDeletion" and "DeletionDate" in out
    # ...and destroyed when its window has passed (the test clock, 8 days on).
    env = regions.west_ks.env()
    env["KMSFS_CLOCK_OFFSET_SECS"] = str(8 * DAY)
    done = subprocess.run([kmsfs_test_clock_bin(), "key", "purge-expired"], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    # The servers' sync tells the primary, whose own window then begins.
    wait_for(lambda: regions.east.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion")
    meta = regions.east.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["MultiRegionConfiguration"]["ReplicaKeys"] == []
    assert meta["DeletionDate"].timestamp() == pytest.approx(time.time() + 7 * DAY, abs=120)


def test_serve_refuses_peers_it_cannot_use(regions):
    wrong_pass = regions.east_ks.dir / "wrong.pass"
    wrong_pass.write_text("not the passphrase\n")
    cases = [
        ([f"{WEST}={regions.east_ks.path}"], 1, "answers as region eu-west-1"),
        ([f"{EAST}={regions.west_ks.path}"], 1, "own region"),
        ([f"{WEST}=https://west.example:7740"], 1, "not supported yet"),
        (["nonsense"], 1, "REGION=PATH"),
        ([f"{WEST}={regions.west_ks.path}", "--peer", f"{WEST}={regions.west_ks.path}"], 1, "given twice"),
        ([f"{WEST}={regions.west_ks.path}", "--peer-passphrase-file", f"{WEST}={wrong_pass}"], 3, "passphrase"),
    ]
    env = regions.east_ks.env()
    env["KMSFS_REPLICA_PASSPHRASE"] = PASSPHRASE
    for args, code, why in cases:
        out = subprocess.run([kmsfs_bin(), "serve", "--listen", "127.0.0.1:0", "--no-socket", "--peer", *args],
                             env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        stderr = out.stderr.decode(errors="replace")
        assert out.returncode == code, (args, out.returncode, stderr)
        assert why in stderr, (args, stderr)
