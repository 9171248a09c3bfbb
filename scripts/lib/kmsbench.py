"""Shared helpers of the API benchmarks (scripts/bench-api.sh, scripts/bench-asym.sh): a
scratch keystore, starting and stopping servers by PID, SigV4-signing one request, and
replaying it with wrk over keep-alive connections."""

import json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

KMSFS = os.environ["KMSFS_BIN"]
ROUNDS = int(os.environ["ROUNDS"])
SECS = int(os.environ["SECONDS_PER_RUN"])
CONNS = int(os.environ["CONNECTIONS"])
THREADS = int(os.environ["THREADS"])
REGION, ACCOUNT = "eu-west-1", "111122223333"


class Bench:
    """A scratch directory with a keystore (default KDF costs), and the servers started for
    the run; `close()` stops them (SIGTERM, by PID) and removes the directory."""

    def __init__(self, prefix):
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.env = dict(os.environ, KMSFS_KEYSTORE=f"{self.work}/keystore.db", KMSFS_PASSPHRASE="bench passphrase")
        self.env.pop("KMSFS_PASSPHRASE_FILE", None)
        self.procs = []
        self.log = open(f"{self.work}/servers.log", "wb")

    def kmsfs(self, *args):
        return subprocess.run([KMSFS, *args], env=self.env, check=True, capture_output=True,
                              stdin=subprocess.DEVNULL).stdout

    def init_keystore(self):
        """A keystore and one access key; returns its credentials (AccessKeyId, SecretAccessKey)."""
        self.kmsfs("keystore", "init", "--account-id", ACCOUNT, "--region", REGION)
        return json.loads(self.kmsfs("access-key", "create", "--user", "bench", "--json"))["AccessKey"]

    def start(self, cmd, port, what):
        """Starts `cmd` (listening on 127.0.0.1:`port`) and waits until it accepts."""
        p = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.procs.append(p)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if p.poll() is not None:
                sys.exit(f"{what} exited {p.returncode} at start")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return p
            except OSError:
                time.sleep(0.05)
        sys.exit(f"{what} did not listen on 127.0.0.1:{port}")

    def start_kmsfs(self):
        """`kmsfs serve` on a free port: (process, endpoint URL)."""
        port = free_port()
        return self.start([KMSFS, "serve", "--listen", f"127.0.0.1:{port}"], port, "kmsfs serve"), f"http://127.0.0.1:{port}"

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def close(self):
        self.stop_all()
        shutil.rmtree(self.work, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(endpoint, creds):
    return boto3.client("kms", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        config=Config(retries={"total_max_attempts": 1}))


def signed(endpoint, creds, op, body):
    """Headers (without Host and Content-Length, which wrk sets) and body of `op` signed now."""
    req = AWSRequest(method="POST", url=endpoint + "/", data=json.dumps(body).encode(),
                     headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{op}"})
    SigV4Auth(Credentials(creds["AccessKeyId"], creds["SecretAccessKey"]), "kms", REGION).add_auth(req)
    return {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}, req.body


def lua_string(b):
    return "\"" + "".join(f"\\{c}" for c in b) + "\""  # decimal escapes: any byte is safe


def wrk(work, endpoint, creds, op, body, conns=None, secs=None, delay_ms=None):
    """One wrk run of `op` signed just before it (a SigV4 signature is good for 5 minutes):
    dict with requests, rps, p50_ms, p99_ms, errors (socket errors and non-2xx answers)."""
    conns, secs = conns or CONNS, secs or SECS
    headers, data = signed(endpoint, creds, op, body)
    lua = ["wrk.method = \"POST\"", f"wrk.body = {lua_string(data)}"]
    lua += [f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode() if isinstance(v, str) else v)}"
            for k, v in headers.items()]
    if delay_ms is not None:
        lua.append(f"function delay() return {delay_ms} end")
    lua.append("""function done(s, latency, r)
  local e = s.errors
  io.write(string.format("BENCH %d %d %d %d %d\\n", s.requests, s.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout + e.status))
end""")
    path = f"{work}/req.lua"
    with open(path, "w") as f:
        f.write("\n".join(lua) + "\n")
    out = subprocess.run(["wrk", "-t", str(min(THREADS, conns)), "-c", str(conns), "-d", f"{secs}s",
                          "--timeout", "2s", "-s", path, endpoint + "/"],
                         capture_output=True, text=True, timeout=secs + 30)
    m = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if not m:
        sys.exit(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    n, dur_us, p50_us, p99_us, errors = map(int, m.groups())
    return {"requests": n, "rps": n / (dur_us / 1e6), "p50_ms": p50_us / 1000.0, "p99_ms": p99_us / 1000.0,
            "errors": errors}


def proc_status_kb(pid, field):
    """A kB field of /proc/PID/status (VmHWM: peak resident set, VmRSS: resident now)."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))
