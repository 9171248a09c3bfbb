"""Helpers for the AWS KMS API suite: a temporary keystore, access keys issued by
`kmsfs access-key create`, a `kmsfs serve` on a free loopback port, a boto3 client and an
aws CLI runner pointed at it.

Everything a test starts is stopped by PID and every temp dir is removed, on failure too
(pytest finalizers). Nothing from the machine's own AWS configuration leaks in: the
environment's AWS_* variables are dropped and the config/credentials files are empty temp
files.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

ACCOUNT = "111122223333"
REGION = "eu-west-1"
PASSPHRASE = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]

# Cheap argon2 costs keep each keystore init (one per module) fast.
FAST_ARGON2 = ["--argon2-memory-kib", "256", "--argon2-iterations", "1"]


def _isolate_from_machine_aws_config():
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    empty = Path(tempfile.mkdtemp(prefix="kmsfs-aws-config-"))
    (empty / "config").write_text("")
    (empty / "credentials").write_text("")
    os.environ["AWS_CONFIG_FILE"] = str(empty / "config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(empty / "credentials")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    return empty


_AWS_CONFIG_DIR = _isolate_from_machine_aws_config()
atexit.register(shutil.rmtree, _AWS_CONFIG_DIR, True)


def kmsfs_bin():
    """The binary cargo built: KMSFS_BIN, else $CARGO_TARGET_DIR/debug/kmsfs, else target/."""
    if os.environ.get("KMSFS_BIN"):
        return os.environ["KMSFS_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    path = Path(target) / "debug" / "kmsfs"
    if not path.exists():
        pytest.exit(f"{path} is missing: run `cargo build` first", returncode=2)
    return str(path)


def kmsfs_test_clock_bin():
    """The test build beside kmsfs_bin() that honours KMSFS_CLOCK_OFFSET_SECS (the kmsfs binary
    ignores it); `cargo test` builds it."""
    path = Path(kmsfs_bin()).with_name("kmsfs-test-clock")
    if not path.exists():
        pytest.exit(f"{path} is missing: run `cargo test` first (it builds the test-clock binary)", returncode=2)
    return str(path)


def user_arn(name):
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def key_arn(key_id):
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"


def alias_arn(alias):
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


class raises_code:
    """`with raises_code("NotFoundException"): client.describe_key(...)` — asserts a
    ClientError with exactly that AWS error code (or one of several given)."""

    def __init__(self, *codes):
        self.codes = codes
        self.error = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            raise AssertionError(f"expected {'/'.join(self.codes)}, the call succeeded")
        if not issubclass(exc_type, ClientError):
            return False
        code = exc.response["Error"]["Code"]
        status = exc.response["ResponseMetadata"].get("HTTPStatusCode")
        assert code in self.codes, f"expected {'/'.join(self.codes)}, got {code}: {exc}"
        assert status is not None and 400 <= status < 500, f"{code} answered with HTTP {status}"
        self.error = exc
        return True

    @property
    def message(self):
        return self.error.response["Error"].get("Message", "")


class Keystore:
    """A temp dir with a keystore of account ACCOUNT / region REGION."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="kmsfs-api-"))
        self.path = self.dir / "keystore.db"
        self.run(["keystore", "init", "--account-id", ACCOUNT, "--region", REGION, *FAST_ARGON2])

    def env(self):
        env = dict(os.environ)
        env.update(KMSFS_KEYSTORE=str(self.path), KMSFS_PASSPHRASE=PASSPHRASE)
        env.pop("KMSFS_PASSPHRASE_FILE", None)
        env.pop("KMSFS_CLOCK_OFFSET_SECS", None)
        return env

    def run(self, args, check=True, input=None):
        out = subprocess.run(
            [kmsfs_bin(), *args],
            env=self.env(),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"kmsfs {' '.join(args)} exited {out.returncode}:\n{out.stderr.decode(errors='replace')}"
            )
        return out

    def json(self, args):
        return json.loads(self.run([*args, "--json"]).stdout)

    def access_key(self, user, uid=None):
        """{"AccessKeyId", "SecretAccessKey", "UserName", ...} of a new access key (acting
        also as Unix uid `uid` if given)."""
        extra = ["--uid", str(uid)] if uid is not None else []
        doc = json.loads(self.run(["access-key", "create", "--user", user, *extra, "--json"]).stdout)
        key = doc["AccessKey"]
        assert key["UserName"] == user and key["Status"] == "Active", doc
        return key

    def audit(self, *args):
        return self.json(["audit", *args])

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """`kmsfs serve --listen 127.0.0.1:PORT` on a keystore, in the foreground, stopped by PID.
    Ready when it prints its readiness line (one JSON object with Url/Listen/Socket/Pid) on
    stdout and answers on the port."""

    def __init__(self, keystore, extra_args=(), env=None, binary=None):
        self.keystore = keystore
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.out_path = keystore.dir / f"serve-{self.port}.out"
        self.log_path = keystore.dir / f"serve-{self.port}.log"
        self.ready = None
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary or kmsfs_bin(), "serve", "--listen", f"127.0.0.1:{self.port}", *extra_args],
                env=env or keystore.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.terminate()
            raise

    def _readiness_line(self):
        text = self.out_path.read_text(errors="replace")
        line = text.split("\n", 1)[0]
        if "\n" not in text:
            return None
        try:
            return json.loads(line)
        except ValueError:
            raise RuntimeError(f"kmsfs serve's first stdout line is not JSON: {line!r}")

    def _wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kmsfs serve exited {self.proc.returncode} before it was ready:\n{self.log_text()}")
            self.ready = self.ready or self._readiness_line()
            if self.ready:
                self.endpoint = self.ready.get("Url") or self.endpoint
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"kmsfs serve was not ready within {timeout}s:\n{self.log_text()}")

    @property
    def socket_path(self):
        return self.ready.get("Socket") if self.ready else None

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def pid(self):
        return self.proc.pid

    def terminate(self, timeout=10.0):
        """SIGTERM to this PID; returns the exit code (None if it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None

    def stop(self):
        self.terminate()

    def client(self, creds, **config):
        return make_client(self.endpoint, creds, **config)


def make_client(endpoint, creds, validate=True, session_token=None, verify=None, **config):
    cfg = Config(
        region_name=REGION,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=20,
        parameter_validation=validate,
        **config,
    )
    session = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=session_token,
        region_name=REGION,
        botocore_session=botocore.session.Session(),
    )
    return session.client("kms", endpoint_url=endpoint, config=cfg, verify=verify)


class Api:
    """What a test module gets: the keystore, the server, and principals alice (who creates
    the keys), bob and carol (other users of the same account), each with a boto3 client."""

    def __init__(self, keystore, server):
        self.keystore = keystore
        self.server = server
        self.creds = {u: keystore.access_key(u) for u in ("alice", "bob", "carol")}
        self.alice = server.client(self.creds["alice"])
        self.bob = server.client(self.creds["bob"])
        self.carol = server.client(self.creds["carol"])
        # The same caller without botocore's client-side checks: the server's own
        # validation is what is under test.
        self.alice_raw = server.client(self.creds["alice"], validate=False)

    @property
    def endpoint(self):
        return self.server.endpoint

    def new_key(self, description="test key", client=None, **kw):
        meta = (client or self.alice).create_key(Description=description, **kw)["KeyMetadata"]
        return meta["KeyId"]

    def aws(self, *args, user="alice", creds=None, check=True, input=None):
        """Runs the real aws CLI against the server with env credentials; returns the
        CompletedProcess (text). check=True asserts exit 0."""
        creds = creds or self.creds[user]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=creds["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.environ["AWS_CONFIG_FILE"],
            AWS_SHARED_CREDENTIALS_FILE=os.environ["AWS_SHARED_CREDENTIALS_FILE"],
            AWS_EC2_METADATA_DISABLED="true",
            AWS_MAX_ATTEMPTS="1",
            AWS_RETRY_MODE="standard",
            AWS_PAGER="",
        )
        out = subprocess.run(
            [sys.executable, "-m", "awscli", "--endpoint-url", self.endpoint, "--output", "json", *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
        return out


def assert_enums(model, operation, response):
    """Every enum-typed string in `response` is a value the service model allows."""

    def walk(shape, value, where):
        if value is None:
            return
        if shape.type_name == "structure":
            for name, member in shape.members.items():
                if name in value:
                    walk(member, value[name], f"{where}.{name}")
        elif shape.type_name == "list":
            for i, item in enumerate(value):
                walk(shape.member, item, f"{where}[{i}]")
        elif shape.type_name == "map":
            for k, v in value.items():
                walk(shape.value, v, f"{where}[{k}]")
        elif shape.type_name == "string" and shape.enum:
            assert value in shape.enum, f"{where} = {value!r} is not one of {shape.enum}"

    walk(model.operation_model(operation).output_shape, response, operation)


def signed_request(endpoint, creds, target, body, when=None, region=REGION, service="kms",
                   headers=None, session_token=None, sign=True):
    """A hand-built AWS JSON 1.1 request, signed with botocore's SigV4Auth (optionally at
    another time `when`, a UTC datetime), as (url, headers dict, body bytes). `target` is
    the operation name (X-Amz-Target: TrentService.<target>)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import botocore.auth as auth

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"TrentService.{target}",
    }
    hdrs.update(headers or {})
    req = AWSRequest(method="POST", url=endpoint + "/", data=data, headers=hdrs)
    if sign:
        signer = SigV4Auth(
            Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], session_token), service, region
        )
        if when is None:
            signer.add_auth(req)
        else:
            real = auth.get_current_datetime
            auth.get_current_datetime = lambda *a, **k: when
            try:
                signer.add_auth(req)
            finally:
                auth.get_current_datetime = real
    return req.url, dict(req.headers.items()), data


def post(endpoint, creds, target, body, **kw):
    """Sends signed_request(...) with urllib; returns (status, headers, parsed JSON or raw)."""
    import urllib.error
    import urllib.request

    url, hdrs, data = signed_request(endpoint, creds, target, body, **kw)
    req = urllib.request.Request(url, data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            status, rh, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, rh, raw = e.code, dict(e.headers), e.read()
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = raw
    return status, rh, doc


def error_type(doc):
    """The error name of an AWS JSON error body ("__type", without any "prefix#")."""
    assert isinstance(doc, dict) and "__type" in doc, f"not an AWS JSON error: {doc!r}"
    return doc["__type"].split("#")[-1]
