#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine: install what kmsfs needs, build it,
# create a keystore and a key, create a volume under that key, mount it, use it, and show
# the audit trail. Leaves the volume mounted (unmount: target/release/kmsfs umount demo/plain).
#
#   scripts/demo.sh            # everything under ./demo
#   DEMO_DIR=/tmp/x scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
kmsfs() { target/release/kmsfs "$@"; }

demo=${DEMO_DIR:-$PWD/demo}
export KMSFS_KEYSTORE="$demo/keystore.db"
# Automation reads the passphrase from the environment; people get a prompt.
export KMSFS_PASSPHRASE=${KMSFS_PASSPHRASE:-demo passphrase, change me}

if mountpoint -q "$demo/plain" 2>/dev/null; then kmsfs umount "$demo/plain"; fi
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
set +x
echo
echo "The volume is mounted at $demo/plain (ciphertext in $demo/cipher)."
echo "Unmount with: target/release/kmsfs umount $demo/plain"
