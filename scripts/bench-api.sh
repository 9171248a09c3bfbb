#!/usr/bin/env bash
# Benchmark of `kmsfs serve` against moto_server in the same run: Decrypt, Encrypt and
# GenerateDataKey over loopback, SigV4-signed, audit on, many concurrent keep-alive
# connections. wrk replays one pre-signed request per operation (a SigV4 signature is good
# for 5 minutes, so each wrk run gets a request signed just before it). The two servers are
# measured interleaved over several rounds; printed per operation and server: min/median/max
# requests/s and the median p99 latency, the kmsfs/moto ratio, then a paced Decrypt run at
# half kmsfs's median rate (p99 there), and kmsfs serve's peak RSS (VmHWM).
#
# Bounded: ROUNDS x 3 operations x 2 servers x SECONDS, plus one paced run; loopback only;
# both servers are started here and stopped by PID.
#
#   scripts/bench-api.sh                  # release build, 3 rounds of 5 s, 64 connections
#   ROUNDS=5 SECONDS_PER_RUN=10 CONNECTIONS=128 scripts/bench-api.sh
#   KMSFS_BIN=target/debug/kmsfs scripts/bench-api.sh   # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

if [ -z "${KMSFS_BIN:-}" ]; then
  flock /tmp/kmsfs-cargo.lock cargo build --release --quiet
  KMSFS_BIN="${CARGO_TARGET_DIR:-target}/release/kmsfs"
fi
export KMSFS_BIN
export ROUNDS="${ROUNDS:-3}" SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
export CONNECTIONS="${CONNECTIONS:-64}" THREADS="${THREADS:-2}"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "ROUNDS must be 1..20" >&2; exit 2; }
[ "$SECONDS_PER_RUN" -ge 1 ] && [ "$SECONDS_PER_RUN" -le 60 ] || { echo "SECONDS_PER_RUN must be 1..60" >&2; exit 2; }

exec python3 - <<'PY'
import json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, shutil

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
OPS = ["Decrypt", "Encrypt", "GenerateDataKey"]

work = tempfile.mkdtemp(prefix="kmsfs-bench-api-")
env = dict(os.environ, KMSFS_KEYSTORE=f"{work}/keystore.db", KMSFS_PASSPHRASE="bench passphrase")
env.pop("KMSFS_PASSPHRASE_FILE", None)
procs = []
endpoint_names = {}  # endpoint -> "kmsfs" / "moto"
counted = [0]  # responses wrk counted from kmsfs (each must be one audit event)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on 127.0.0.1:{port}")


def start(cmd, port, what, log):
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    procs.append(p)
    wait_port(port, p, what)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def kmsfs(*args):
    return subprocess.run([KMSFS, *args], env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL).stdout


def signed(endpoint, creds, op, body):
    req = AWSRequest(method="POST", url=endpoint + "/", data=json.dumps(body).encode(),
                     headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{op}"})
    SigV4Auth(Credentials(creds["AccessKeyId"], creds["SecretAccessKey"]), "kms", REGION).add_auth(req)
    return {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}, req.body


def lua_string(b):
    return "\"" + "".join(f"\\{c}" for c in b) + "\""  # decimal escapes: any byte is safe


def wrk_run(endpoint, creds, op, body, conns, secs, delay_ms=None):
    """One wrk run of a request signed now; returns (req/s, p99 ms, non-2xx+socket errors)."""
    headers, data = signed(endpoint, creds, op, body)
    lua = ["wrk.method = \"POST\"", f"wrk.body = {lua_string(data)}"]
    lua += [f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode() if isinstance(v, str) else v)}" for k, v in headers.items()]
    if delay_ms is not None:
        lua.append(f"function delay() return {delay_ms} end")
    lua.append("""function done(s, latency, r)
  local e = s.errors
  io.write(string.format("BENCH %d %d %d %d\\n", s.requests, s.duration, latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end""")
    path = f"{work}/req.lua"
    with open(path, "w") as f:
        f.write("\n".join(lua) + "\n")
    out = subprocess.run(["wrk", "-t", str(min(THREADS, conns)), "-c", str(conns), "-d", f"{secs}s",
                          "--timeout", "2s", "-s", path, endpoint + "/"],
                         capture_output=True, text=True, timeout=secs + 30)
    m = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if not m:
        sys.exit(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    n, dur_us, p99_us, errors = map(int, m.groups())
    if "kmsfs" in endpoint_names.get(endpoint, ""):
        counted[0] += n
    return n / (dur_us / 1e6), p99_us / 1000.0, errors


def client(endpoint, creds):
    return boto3.client("kms", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        config=Config(retries={"total_max_attempts": 1}))


def bodies(endpoint, creds):
    c = client(endpoint, creds)
    key = c.create_key(Description="bench")["KeyMetadata"]["KeyId"]
    blob = c.encrypt(KeyId=key, Plaintext=b"a 32-byte secret for the bench!!",
                     EncryptionContext={"app": "bench"})["CiphertextBlob"]
    import base64
    return {
        "Decrypt": {"CiphertextBlob": base64.b64encode(blob).decode(), "EncryptionContext": {"app": "bench"}},
        "Encrypt": {"KeyId": key, "Plaintext": base64.b64encode(b"x" * 64).decode(), "EncryptionContext": {"app": "bench"}},
        "GenerateDataKey": {"KeyId": key, "KeySpec": "AES_256"},
    }


try:
    log = open(f"{work}/servers.log", "wb")
    kmsfs("keystore", "init", "--account-id", ACCOUNT, "--region", REGION)
    creds = json.loads(kmsfs("access-key", "create", "--user", "bench", "--json"))["AccessKey"]
    kport, mport = free_port(), free_port()
    server = start([KMSFS, "serve", "--listen", f"127.0.0.1:{kport}"], kport, "kmsfs serve", log)
    start(["moto_server", "-H", "127.0.0.1", "-p", str(mport)], mport, "moto_server", log)
    targets = {"kmsfs": f"http://127.0.0.1:{kport}", "moto": f"http://127.0.0.1:{mport}"}
    endpoint_names.update({v: k for k, v in targets.items()})
    moto_creds = {"AccessKeyId": "AKIAMOTOBENCH0000000", "SecretAccessKey": "m" * 40}
    tcreds = {"kmsfs": creds, "moto": moto_creds}
    tbodies = {t: bodies(targets[t], tcreds[t]) for t in targets}

    results = {(op, t): [] for op in OPS for t in targets}
    for r in range(ROUNDS):
        for op in OPS:
            for t in (["kmsfs", "moto"] if r % 2 == 0 else ["moto", "kmsfs"]):
                rps, p99, errors = wrk_run(targets[t], tcreds[t], op, tbodies[t][op], CONNS, SECS)
                results[(op, t)].append((rps, p99, errors))
                print(f"round {r + 1} {op:16} {t:6} {rps:10.0f} req/s  p99 {p99:7.2f} ms  errors {errors}", flush=True)

    print(f"\n{CONNS} connections, {THREADS} wrk threads, {ROUNDS} rounds of {SECS} s each")
    print(f"{'operation':16} {'server':6} {'min':>9} {'median':>9} {'max':>9} req/s   p99 (median)  errors")
    medians = {}
    for op in OPS:
        for t in targets:
            rs = [x[0] for x in results[(op, t)]]
            p99 = statistics.median(x[1] for x in results[(op, t)])
            errs = sum(x[2] for x in results[(op, t)])
            medians[(op, t)] = statistics.median(rs)
            print(f"{op:16} {t:6} {min(rs):9.0f} {statistics.median(rs):9.0f} {max(rs):9.0f}         {p99:7.2f} ms  {errs}")
    for op in OPS:
        ratio = medians[(op, "kmsfs")] / max(medians[(op, "moto")], 1e-9)
        print(f"{op:16} kmsfs/moto = {ratio:.1f}x")

    # Latency at half the peak: enough connections, each waiting ~20 ms between its requests
    # (wrk's delay() is per request, in whole ms), that together they offer about half the
    # median Decrypt rate; a 1-2 ms response time then shifts the offered rate by <10%.
    half = medians[("Decrypt", "kmsfs")] / 2
    paced_conns = max(4, min(1000, round(half * 20 / 1000)))
    delay_ms = max(1, round(1000 * paced_conns / max(half, 1)))
    rps, p99, errors = wrk_run(targets["kmsfs"], creds, "Decrypt", tbodies["kmsfs"]["Decrypt"], paced_conns, SECS, delay_ms)
    print(f"paced Decrypt (offered ~{half:.0f}/s: {paced_conns} connections, {delay_ms} ms between requests): "
          f"{rps:.0f} req/s, p99 {p99:.2f} ms, errors {errors}")

    with open(f"/proc/{server.pid}/status") as f:
        hwm = next(line.split(":", 1)[1].strip() for line in f if line.startswith("VmHWM"))
    print(f"kmsfs serve peak RSS (VmHWM): {hwm}")
    stop_all()  # graceful: every answered call is in the trail before it exits
    last = json.loads(subprocess.run([KMSFS, "audit", "--json", "--limit", "1"], env=env, check=True,
                                     capture_output=True).stdout)
    seq = last[0]["Seq"] if last else 0
    print(f"audit: {seq} events for {counted[0]} responses wrk counted from kmsfs"
          f"{'' if seq >= counted[0] else '  <-- EVENTS MISSING'}")
    subprocess.run([KMSFS, "audit", "verify"], env=env, check=True, capture_output=True)
    print("audit verify: ok")
finally:
    stop_all()
    shutil.rmtree(work, ignore_errors=True)
PY
