#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine: install what kmsfs needs, build it,
# create a keystore and a key, create a volume under that key, mount it, use it, and show
# the audit trail; then start `kmsfs serve` (the AWS KMS API on loopback) and use it with
# the aws CLI. Leaves the volume mounted and the server running (stop: the lines printed at
# the end).
#
#   scripts/demo.sh            # everything under ./demo
#   DEMO_DIR=/tmp/x scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# DEMO_KMSFS=PATH runs an already built binary instead of building the release one.
if [ -z "${DEMO_KMSFS:-}" ]; then cargo build --release --quiet; fi
bin=${DEMO_KMSFS:-target/release/kmsfs}
kmsfs() { "$bin" "$@"; }

demo=${DEMO_DIR:-$PWD/demo}
export KMSFS_KEYSTORE="$demo/keystore.db"
# Automation reads the passphrase from the environment; people get a prompt.
export KMSFS_PASSPHRASE=${KMSFS_PASSPHRASE:-demo passphrase, change me}

if mountpoint -q "$demo/plain" 2>/dev/null; then kmsfs umount "$demo/plain"; fi
if [ -f "$demo/serve.pid" ]; then kill "$(cat "$demo/serve.pid")" 2>/dev/null || true; fi
rm -rf "$demo" && mkdir -p "$demo/plain"

set -x
kmsfs keystore init
kmsfs key create --alias alias/demo --description "demo volume key"
kmsfs volume init "$demo/cipher" --key alias/demo
kmsfs mount "$demo/cipher" "$demo/plain"
echo "hello from kmsfs" > "$demo/plain/hello.txt"
mkdir "$demo/plain/docs" && seq 1 1000 > "$demo/plain/docs/numbers.txt"
cat "$demo/plain/hello.txt"
kmsfs file info "$demo/plain/hello.txt"
ls -l "$demo/cipher"
kmsfs key rotate alias/demo
cat "$demo/plain/hello.txt"
kmsfs audit --key alias/demo --limit 8
kmsfs audit verify

# The same keystore as an AWS KMS endpoint: an access key, the server on a free loopback
# port (it prints one JSON line when it listens), and the aws CLI against it.
kmsfs access-key create --user demo --json > "$demo/access-key.json"
set +x
kmsfs serve --listen 127.0.0.1:0 > "$demo/serve.json" 2> "$demo/serve.log" &
echo $! > "$demo/serve.pid"
for _ in $(seq 100); do [ -s "$demo/serve.json" ] && break; sleep 0.1; done
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Url"])' "$demo/serve.json")
region=$(kmsfs keystore info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Region"])')
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=$region
AWS_ACCESS_KEY_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["AccessKey"]["AccessKeyId"])' "$demo/access-key.json")
AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["AccessKey"]["SecretAccessKey"])' "$demo/access-key.json")
set -x
aws --endpoint-url "$url" kms create-key --description "made through the API" --query KeyMetadata.Arn --output text
aws --endpoint-url "$url" kms list-keys --output table
set +x
echo
echo "The volume is mounted at $demo/plain (ciphertext in $demo/cipher)."
echo "kmsfs serve answers the AWS KMS API at $url (access key in $demo/access-key.json)."
echo "Stop with: $bin umount $demo/plain; kill \$(cat $demo/serve.pid)"
