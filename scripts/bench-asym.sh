#!/usr/bin/env bash
# Benchmark of Sign and Verify through `kmsfs serve` (SigV4-signed, audit on, keep-alive
# connections replayed by wrk) for ECC_NIST_P256 (ECDSA_SHA_256) and RSA_2048
# (RSASSA_PKCS1_V1_5_SHA_256), beside `openssl speed` for the same algorithms on the same
# machine with as many processes as the server has workers (2). Prints per case the API's
# min/median/max ops/s over the rounds, OpenSSL's ops/s and the ratio API median/OpenSSL:
# how much of the bare crypto the API keeps (its overhead is HTTP, SigV4, JSON, policy and
# the audit write).
#
# Bounded: ROUNDS x 4 cases x SECONDS_PER_RUN, plus openssl speed; loopback only; the server
# is started here and stopped by PID. Run it on a quiet machine: wrk shares the cores.
#
#   scripts/bench-asym.sh                              # release build, 3 rounds of 5 s
#   ROUNDS=5 SECONDS_PER_RUN=10 CONNECTIONS=32 scripts/bench-asym.sh
#   KMSFS_BIN=target/debug/kmsfs scripts/bench-asym.sh # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS="${CONNECTIONS:-16}"
source scripts/lib/bench-setup.sh

exec python3 - <<'PY'
import base64, re, statistics, subprocess, sys

from kmsbench import CONNS, ROUNDS, SECS, THREADS, Bench, client, wrk

WORKERS = 2  # kmsfs serve's async worker threads, where Sign and Verify run
CASES = [("ECC_NIST_P256", "ECDSA_SHA_256", "ecdsap256"), ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", "rsa2048")]


def openssl_speed(alg):
    """(sign/s, verify/s) of `openssl speed -multi WORKERS` for rsa2048 or ecdsap256."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(SECS), "-multi", str(WORKERS), alg],
                         capture_output=True, text=True, timeout=10 * SECS + 60).stdout
    pattern = r"^rsa\s+2048 bits.*?([\d.]+)\s+([\d.]+)\s*$" if alg == "rsa2048" else r"256 bits ecdsa \(nistp256\).*?([\d.]+)\s+([\d.]+)\s*$"
    m = re.search(pattern, out, re.M)
    if not m:
        sys.exit(f"openssl speed {alg} printed no result:\n{out}")
    return float(m.group(1)), float(m.group(2))


bench = Bench("kmsfs-bench-asym-")
try:
    creds = bench.init_keystore()
    _, endpoint = bench.start_kmsfs()
    c = client(endpoint, creds)
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
            res = wrk(bench.work, endpoint, creds, op, body)
            if res["errors"]:
                sys.exit(f"{spec} {op}: {res['errors']} errors in round {r + 1}")
            results[(spec, op)].append(res["rps"])
            print(f"round {r + 1} {spec:14} {op:6} {res['rps']:9.0f} req/s  p99 {res['p99_ms']:6.2f} ms", flush=True)

    print(f"\n{CONNS} connections, {THREADS} wrk threads, {ROUNDS} rounds of {SECS} s; "
          f"openssl speed -multi {WORKERS} -seconds {SECS}")
    print(f"{'key spec':14} {'op':6} {'API min':>9} {'median':>9} {'max':>9} {'openssl':>10} {'API/openssl':>12}")
    for spec, alg, speed_name in CASES:
        sign_s, verify_s = openssl_speed(speed_name)
        for op, bare in (("Sign", sign_s), ("Verify", verify_s)):
            rs = results[(spec, op)]
            api = statistics.median(rs)
            print(f"{spec:14} {op:6} {min(rs):9.0f} {api:9.0f} {max(rs):9.0f} {bare:10.0f} {api / bare:11.2f}x")
    bench.stop_all()
    bench.kmsfs("audit", "verify")
    print("audit verify: ok")
finally:
    bench.close()
PY
