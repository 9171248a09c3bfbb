#!/usr/bin/env bash
# Measures the O(files) operations on a tree of BENCH_FILES small files (default 10,000):
# `kmsfs rewrap` offline and through a live mount (rotation catch-up and a move to another
# key), `kmsfs fsck`, and `kmsfs volume copy`, each against `cp -a` of the same cipher
# directory as the baseline measured in the same run (ratios below 1.0: faster than cp).
#
#   scripts/bench-rewrap.sh
#   BENCH_FILES=50000 scripts/bench-rewrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KMSFS_BENCH=1 scripts/install-deps.sh >/dev/null
cargo build --release --quiet
KMSFS=$PWD/target/release/kmsfs
FILES=${BENCH_FILES:-10000}
WORK=$(mktemp -d /var/tmp/kmsfs-rewrap-bench.XXXXXX)
export KMSFS_KEYSTORE=$WORK/keystore.db KMSFS_PASSPHRASE=bench
cleanup() {
  mountpoint -q "$WORK/mnt" 2>/dev/null && fusermount3 -u "$WORK/mnt" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

"$KMSFS" keystore init --argon2-memory-kib 65536 >/dev/null
"$KMSFS" key create --alias alias/bench >/dev/null
"$KMSFS" key create --alias alias/other >/dev/null
"$KMSFS" volume init "$WORK/cipher" --key alias/bench >/dev/null
mkdir "$WORK/mnt"
"$KMSFS" mount "$WORK/cipher" "$WORK/mnt"
python3 - "$WORK/mnt" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(1000 + i % 7000))
PY
"$KMSFS" umount "$WORK/mnt"

row() { printf '%-34s %8.2f s %10.0f files/s %8.2f\n' "$1" "$2" "$(echo "$FILES / $2" | bc -l)" "$(echo "$2 / $CP" | bc -l)"; }
sync
CP=$(secs cp -a "$WORK/cipher" "$WORK/cp-baseline"); rm -rf "$WORK/cp-baseline"
echo "$FILES files, $(du -sm "$WORK/cipher" | cut -f1) MiB of ciphertext"
printf '%-34s %10s %18s %8s\n' operation time rate "vs cp -a"
row "cp -a of the cipher dir (baseline)" "$CP"
"$KMSFS" key rotate alias/bench >/dev/null
row "rewrap offline (rotation)" "$(secs "$KMSFS" rewrap "$WORK/cipher")"
row "rewrap offline (nothing to do)" "$(secs "$KMSFS" rewrap "$WORK/cipher")"
row "fsck (every block)" "$(secs "$KMSFS" fsck "$WORK/cipher")"
row "volume copy --to-key" "$(secs "$KMSFS" volume copy "$WORK/cipher" "$WORK/copy" --to-key alias/other)"
"$KMSFS" mount "$WORK/cipher" "$WORK/mnt"
"$KMSFS" key rotate alias/bench >/dev/null
row "rewrap live (rotation)" "$(secs "$KMSFS" rewrap "$WORK/mnt")"
row "rewrap live --to-key (move)" "$(secs "$KMSFS" rewrap "$WORK/mnt" --to-key alias/other)"
"$KMSFS" umount "$WORK/mnt"
