#!/usr/bin/env bash
# Benchmark of Sign and Verify through `kmsfs serve` (SigV4-signed, audit on, keep-alive
# connections replayed by wrk) for ECC_NIST_P256 (ECDSA_SHA_256) and RSA_2048
# (RSASSA_PKCS1_V1_5_SHA_256), beside `openssl speed` for the same algorithms on the same
# machine with as many processes as the server has workers (2). Prints per case the API's
# median ops/s over the rounds, OpenSSL's ops/s and the ratio API/OpenSSL: how much of the
# bare crypto the API keeps (its overhead is HTTP, SigV4, JSON, policy and the audit write).
#
# Bounded: ROUNDS x 4 cases x SECONDS_PER_RUN, plus openssl speed; loopback only; the server
# is started here and stopped by PID. Run it on a quiet machine: wrk shares the cores.
#
#   scripts/bench-asym.sh                              # release build, 3 rounds of 5 s
#   ROUNDS=5 SECONDS_PER_RUN=10 CONNECTIONS=32 scripts/bench-asym.sh
#   KMSFS_BIN=target/debug/kmsfs scripts/bench-asym.sh # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

if [ -z "${KMSFS_BIN:-}" ]; then
  flock /tmp/kmsfs-cargo.lock cargo build --release --quiet
  KMSFS_BIN="${CARGO_TARGET_DIR:-target}/release/kmsfs"
fi
export KMSFS_BIN
export ROUNDS="${ROUNDS:-3}" SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
export CONNECTIONS="${CONNECTIONS:-16}" THREADS="${THREADS:-2}"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "ROUNDS must be 1..20" >&2; exit 2; }
[ "$SECONDS_PER_RUN" -ge 1 ] && [ "$SECONDS_PER_RUN" -le 60 ] || { echo "SECONDS_PER_RUN must be 1..60" >&2; exit 2; }

exec python3 - <<'PY'
import base64, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

KMSFS = os.environ["KMSFS_BIN"]
ROUNDS, SECS = int(os.environ["ROUNDS"]), int(os.environ["SECONDS_PER_RUN"])
CONNS, THREADS = int(os.environ["CONNECTIONS"]), int(os.environ["THREADS"])
REGION, ACCOUNT = "eu-west-1", "111122223333"
WORKERS = 2  # kmsfs serve's async worker threads, where Sign and Verify run
CASES = [("ECC_NIST_P256", "ECDSA_SHA_256", "ecdsap256"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", "rsa2048")]

work = tempfile.mkdtemp(prefix="kmsfs-bench-asym-")
env = dict(os.environ, KMSFS_KEYSTORE=f"{work}/keystore.db", KMSFS_PASSPHRASE="bench passphrase")
env.pop("KMSFS_PASSPHRASE_FILE", None)
server = None


def kmsfs(*args):
    return subprocess.run([KMSFS, *args], env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL).stdout


def signed(endpoint, creds, op, body):
    req = AWSRequest(method="POST", url=endpoint + "/", data=json.dumps(body).encode(),
                     headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{op}"})
    SigV4Auth(Credentials(creds["AccessKeyId"], creds["SecretAccessKey"]), "kms", REGION).add_auth(req)
    return {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}, req.body


def lua_string(b):
    return "\"" + "".join(f"\\{c}" for c in b) + "\""


def wrk_run(endpoint, creds, op, body):
    """One wrk run of a request signed now: (requests/s, errors)."""
    headers, data = signed(endpoint, creds, op, body)
    lua = ["wrk.method = \"POST\"", f"wrk.body = {lua_string(data)}"]
    lua += [f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode() if isinstance(v, str) else v)}"
            for k, v in headers.items()]
    lua.append("""function done(s, latency, r)
  local e = s.errors
  io.write(string.format("BENCH %d %d %d\\n", s.requests, s.duration,
    e.connect + e.read + e.write + e.timeout + e.status))
end""")
    path = f"{work}/req.lua"
    with open(path, "w") as f:
        f.write("\n".join(lua) + "\n")
    out = subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNS), "-d", f"{SECS}s", "--timeout", "2s",
                          "-s", path, endpoint + "/"], capture_output=True, text=True, timeout=SECS + 30)
    m = re.search(r"^BENCH (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if not m:
        sys.exit(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    n, dur_us, errors = map(int, m.groups())
    return n / (dur_us / 1e6), errors


def openssl_speed(alg):
    """(sign/s, verify/s) of `openssl speed -multi WORKERS` for rsa2048 or ecdsap256."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(SECS), "-multi", str(WORKERS), alg],
                         capture_output=True, text=True, timeout=10 * SECS + 60).stdout
    pattern = r"^rsa\s+2048 bits.*?([\d.]+)\s+([\d.]+)\s*$" if alg == "rsa2048" else r"256 bits ecdsa \(nistp256\).*?([\d.]+)\s+([\d.]+)\s*$"
    m = re.search(pattern, out, re.M)
    if not m:
        sys.exit(f"openssl speed {alg} printed no result:\n{out}")
    return float(m.group(1)), float(m.group(2))


try:
    kmsfs("keystore", "init", "--account-id", ACCOUNT, "--region", REGION)
    creds = json.loads(kmsfs("access-key", "create", "--user", "bench", "--json"))["AccessKey"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(f"{work}/server.log", "wb")
    server = subprocess.Popen([KMSFS, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("kmsfs serve did not start")
            time.sleep(0.05)
    c = boto3.client("kms", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=creds["AccessKeyId"],
                     aws_secret_access_key=creds["SecretAccessKey"], config=Config(retries={"total_max_attempts": 1}))
    message = b"a 64-byte document to sign, the same for every request of a run."
    bodies = {}
    for spec, alg, _ in CASES:
        key = c.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        sig = c.sign(KeyId=key, Message=message, SigningAlgorithm=alg)["Signature"]
        common = {"KeyId": key, "Message": base64.b64encode(message).decode(), "SigningAlgorithm": alg}
        bodies[(spec, "Sign")] = common
        bodies[(spec, "Verify")] = dict(common, Signature=base64.b64encode(sig).decode())

    results = {k: [] for k in bodies}
    for r in range(ROUNDS):
        for (spec, op), body in bodies.items():
            rps, errors = wrk_run(endpoint, creds, op, body)
            if errors:
                sys.exit(f"{spec} {op}: {errors} errors in round {r + 1}")
            results[(spec, op)].append(rps)
            print(f"round {r + 1} {spec:14} {op:6} {rps:9.0f} req/s", flush=True)

    print(f"\n{CONNS} connections, {THREADS} wrk threads, {ROUNDS} rounds of {SECS} s; "
          f"openssl speed -multi {WORKERS} -seconds {SECS}")
    print(f"{'key spec':14} {'op':6} {'API median':>11} {'openssl':>10} {'API/openssl':>12}")
    for spec, alg, speed_name in CASES:
        sign_s, verify_s = openssl_speed(speed_name)
        for op, bare in (("Sign", sign_s), ("Verify", verify_s)):
            api = statistics.median(results[(spec, op)])
            print(f"{spec:14} {op:6} {api:11.0f} {bare:10.0f} {api / bare:11.2f}x")
    subprocess.run([KMSFS, "audit", "verify"], env=env, check=True, capture_output=True)
    print("audit verify: ok")
finally:
    if server is not None and server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    shutil.rmtree(work, ignore_errors=True)
PY
