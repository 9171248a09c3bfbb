#!/usr/bin/env bash
# Counts the FUSE requests a command sends, per opcode, with their mean and total latency
# (send to reply), from the kernel's fuse:fuse_request_send/end tracepoints. Needs root and
# perf (Debian: linux-perf).
#
#   scripts/fuse-ops.sh -- ls -lR /mnt/volume
#   FUSE_OPS_MOUNT=/mnt/volume FUSE_OPS_PER=9340 scripts/fuse-ops.sh -- tar -xf src.tar -C /mnt/volume
#
# FUSE_OPS_MOUNT: count only the requests of the FUSE file system mounted there (every FUSE
# file system on the machine is traced, and other programs' mounts would be counted too).
# FUSE_OPS_PER: also print each count divided by this (e.g. per file extracted).
set -euo pipefail
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 -- COMMAND [ARGS...]" >&2; exit 2; }
conn=
if [ -n "${FUSE_OPS_MOUNT:-}" ]; then
  mountpoint -q "$FUSE_OPS_MOUNT" || { echo "FUSE_OPS_MOUNT: $FUSE_OPS_MOUNT is not a mount point" >&2; exit 2; }
  # The tracepoint names a connection by the kernel's dev_t of its superblock
  # (major << 20 | minor); stat gives the same device in the user-space encoding.
  conn=$(python3 -c 'import os, sys; d = os.stat(sys.argv[1]).st_dev; print(os.major(d) << 20 | os.minor(d))' "$FUSE_OPS_MOUNT")
fi
data=$(mktemp /tmp/fuse-ops.XXXXXX.data)
trap 'rm -f "$data"' EXIT
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$data" -- "$@" >/dev/null
perf script -i "$data" 2>/dev/null | CONN="$conn" PER="${FUSE_OPS_PER:-}" python3 -c '
import collections, os, re, sys
conn, per = os.environ["CONN"], os.environ["PER"]
sent, total, count = {}, collections.defaultdict(float), collections.Counter()
pat = re.compile(r" (\d+\.\d+): +fuse:fuse_request_(send|end): connection (\d+) req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in sys.stdin:
    m = pat.search(line)
    if not m or (conn and m.group(3) != conn):
        continue
    t, kind, req = float(m.group(1)), m.group(2), m.group(4)
    if kind == "send":
        sent[req] = (t, m.group(5))
    elif req in sent:
        t0, op = sent.pop(req)
        total[op] += t - t0
        count[op] += 1
head = "%-20s %8s %9s %8s" % ("request", "count", "mean us", "total s")
print(head + (" %9s" % "per" if per else ""))
for op, n in count.most_common():
    line = f"{op:20} {n:8} {total[op] / n * 1e6:9.1f} {total[op]:8.2f}"
    print(line + (f" {n / float(per):9.3f}" if per else ""))
n = sum(count.values())
line = "%-20s" % "all" + f" {n:8} {sum(total.values()) / max(n, 1) * 1e6:9.1f} {sum(total.values()):8.2f}"
print(line + (f" {n / float(per):9.3f}" if per else ""))
'
