#!/usr/bin/env bash
# Counts the FUSE requests a command sends, per opcode, with their mean and total latency
# (send to reply), from the kernel's fuse:fuse_request_send/end tracepoints. Every FUSE file
# system on the machine is traced, so run one thing at a time. Needs root and perf
# (Debian: linux-perf).
#
#   scripts/fuse-ops.sh -- ls -lR /mnt/volume
#   scripts/fuse-ops.sh -- sh -c 'tar -xf src.tar -C /mnt/volume && sync'
set -euo pipefail
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 -- COMMAND [ARGS...]" >&2; exit 2; }
data=$(mktemp /tmp/fuse-ops.XXXXXX.data)
trap 'rm -f "$data"' EXIT
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$data" -- "$@" >/dev/null
perf script -i "$data" 2>/dev/null | python3 -c '
import collections, re, sys
sent, total, count = {}, collections.defaultdict(float), collections.Counter()
pat = re.compile(r" (\d+\.\d+): +fuse:fuse_request_(send|end): connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in sys.stdin:
    m = pat.search(line)
    if not m:
        continue
    t, kind, req = float(m.group(1)), m.group(2), m.group(3)
    if kind == "send":
        sent[req] = (t, m.group(4))
    elif req in sent:
        t0, op = sent.pop(req)
        total[op] += t - t0
        count[op] += 1
print("%-20s %8s %9s %8s" % ("request", "count", "mean us", "total s"))
for op, n in count.most_common():
    print(f"{op:20} {n:8} {total[op] / n * 1e6:9.1f} {total[op]:8.2f}")
'
