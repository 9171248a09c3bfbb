#!/usr/bin/env bash
# Benchmarks kmsfs against gocryptfs (Debian package) and a plain directory on the same disk,
# in one run, interleaved, and prints the median time per phase and the ratio
# kmsfs / gocryptfs (below 1.0 means kmsfs is faster).
#
# Phases (gocryptfs's canonical workload): write BENCH_MB MiB with dd conv=fsync, read it back
# after dropping caches, untar a source tree, ls -lR, cat every file, rm -rf.
#
#   scripts/bench.sh                   # 1 round, 1024 MiB
#   BENCH_ROUNDS=5 BENCH_MB=1024 scripts/bench.sh
#   BENCH_TARBALL=/path/to/src.tar.xz scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KMSFS_BENCH=1 scripts/install-deps.sh
cargo build --release --quiet
KMSFS=$PWD/target/release/kmsfs

ROUNDS=${BENCH_ROUNDS:-1}
MB=${BENCH_MB:-1024}
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/kmsfs-bench.XXXXXX)}
TARBALL=${BENCH_TARBALL:-}
if [ -z "$TARBALL" ]; then
  TARBALL=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | head -n1 || true)
fi
if [ -z "$TARBALL" ]; then
  # Fallback: the largest crate in the cargo cache (a .crate is a .tar.gz).
  TARBALL=$(ls -S ~/.cargo/registry/cache/*/*.crate 2>/dev/null | head -n1 || true)
fi
[ -n "$TARBALL" ] || { echo "no source tarball: set BENCH_TARBALL" >&2; exit 1; }

export KMSFS_KEYSTORE=$WORK/keystore.db KMSFS_PASSPHRASE=bench
PIDS=()
cleanup() {
  for m in "$WORK"/*/mnt; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -z "${BENCH_DIR:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

wait_mounted() { for _ in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done; echo "mount of $1 failed" >&2; exit 1; }

setup() {
  mkdir -p "$WORK"/{plain,kmsfs,gocryptfs}/mnt "$WORK"/kmsfs/cipher "$WORK"/gocryptfs/cipher
  "$KMSFS" keystore init --argon2-memory-kib 65536 >/dev/null
  "$KMSFS" volume init "$WORK/kmsfs/cipher" >/dev/null
  "$KMSFS" mount -f "$WORK/kmsfs/cipher" "$WORK/kmsfs/mnt" 2>"$WORK/kmsfs.log" &
  KMSFS_PID=$!; PIDS+=("$KMSFS_PID")
  wait_mounted "$WORK/kmsfs/mnt"
  gocryptfs -q -init -extpass "echo bench" "$WORK/gocryptfs/cipher" >/dev/null
  gocryptfs -q -extpass "echo bench" "$WORK/gocryptfs/cipher" "$WORK/gocryptfs/mnt"
  wait_mounted "$WORK/gocryptfs/mnt"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

now() { date +%s.%N; }
# phase NAME DIR: runs the phase in DIR, prints seconds
phase() {
  local name=$1 dir=$2 t0 t1
  case $name in
    write) t0=$(now); dd if=/dev/zero of="$dir/zero" bs=1M count="$MB" conv=fsync status=none; t1=$(now) ;;
    read)  drop_caches; t0=$(now); dd if="$dir/zero" of=/dev/null bs=1M status=none; t1=$(now); rm -f "$dir/zero" ;;
    untar) t0=$(now); tar -xf "$TARBALL" -C "$dir"; sync; t1=$(now) ;;
    ls)    drop_caches; t0=$(now); ls -lR "$dir" >/dev/null; t1=$(now) ;;
    cat)   drop_caches; t0=$(now); find "$dir" -type f -print0 | xargs -0 cat >/dev/null; t1=$(now) ;;
    rm)    t0=$(now); rm -rf "${dir:?}"/*; sync; t1=$(now) ;;
  esac
  echo "$t1 - $t0" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

setup
PHASES=(write read untar ls cat rm)
declare -A T
for r in $(seq "$ROUNDS"); do
  for p in "${PHASES[@]}"; do
    for fs in plain kmsfs gocryptfs; do
      T[$fs,$p]+="$(phase "$p" "$WORK/$fs/mnt") "
    done
  done
done

rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$KMSFS_PID/status")
echo "kmsfs bench: $ROUNDS round(s), ${MB} MiB, tarball $(basename "$TARBALL"), $(nproc) cores"
printf '%-6s %10s %10s %10s %16s\n' phase plain kmsfs gocryptfs 'kmsfs/gocryptfs'
for p in "${PHASES[@]}"; do
  m_plain=$(echo "${T[plain,$p]}" | tr ' ' '\n' | grep . | median)
  m_k=$(echo "${T[kmsfs,$p]}" | tr ' ' '\n' | grep . | median)
  m_g=$(echo "${T[gocryptfs,$p]}" | tr ' ' '\n' | grep . | median)
  printf '%-6s %9.2fs %9.2fs %9.2fs %16.2f\n' "$p" "$m_plain" "$m_k" "$m_g" "$(echo "$m_k / $m_g" | bc -l)"
done
if [ "$MB" -gt 0 ]; then
  echo "throughput (MB/s): write kmsfs $(echo "$MB*1.048576 / $(echo "${T[kmsfs,write]}" | tr ' ' '\n' | grep . | median)" | bc -l | xargs printf '%.0f'), gocryptfs $(echo "$MB*1.048576 / $(echo "${T[gocryptfs,write]}" | tr ' ' '\n' | grep . | median)" | bc -l | xargs printf '%.0f')"
fi
echo "kmsfs daemon peak RSS: $((rss_kib / 1024)) MiB"
