#!/usr/bin/env bash
# Benchmarks kmsfs (mounted by default: audit on, no write-back cache) against gocryptfs and
# securefs (Debian packages) and a plain ext4 directory, all on the same disk and under one
# directory, with the workload of gocryptfs's canonical benchmark:
#
#   write  dd 1 GiB (BENCH_MB) of zeros, conv=fsync
#   read   dd it back after drop_caches (the file is removed afterwards, untimed)
#   untar  tar -xf of Debian's linux-source-6.1 tarball, decompressed once beforehand and
#          pre-read into the page cache before every system's untar (same path, same command)
#   ls     ls -lR of the tree
#   cat    cat of every file
#   rm     rm -rf of the tree, then statfs (kmsfs frees removed files in the background;
#          statfs waits for that, so the phase counts it; for the others it is one cheap call)
#
# untar and rm are timed without a trailing sync, as the canonical benchmark times them; the
# sync after each is timed separately and reported as the extra rows untar+sync and rm+sync.
#
# How the numbers are made comparable:
# - one warm-up round (BENCH_WARMUP=1), not counted, then BENCH_ROUNDS counted rounds;
# - every round starts from fresh volumes and fresh mounts (no daemon carries state from one
#   round to the next), and the order of the systems rotates by one every round;
# - before every phase of every system: statfs on every mount (lets kmsfs finish background
#   frees), sync, drop_caches, then wait until Dirty + Writeback in /proc/meminfo are below
#   BENCH_DIRTY_KB, so no system's writeback runs in the next one's timing;
# - no process is pinned; the daemons' CPU affinity is recorded.
#
# Per round and phase: peer/kmsfs = the faster of gocryptfs and securefs / kmsfs (above 1.0:
# kmsfs faster), and kmsfs/plain = kmsfs / plain ext4 (time; 1.0 = as fast as ext4),
# printed as min / median / max over the counted rounds. Results go to BENCH_OUT
# (default /var/tmp/kmsfs-bench-results/<UTC time>): times.tsv (every timed phase of every
# round, warm-up included with counted=0: its position in the round's order, seconds, the
# sync after it, CPU seconds of the command, the daemon, kernel threads, other processes,
# steal, the machine's background load just before, Dirty+Writeback at its start),
# ratios.tsv, rounds.tsv (order, daemon pid, CPU affinity, threads, peak RSS per round),
# env.txt (kernel, CPU, cpuidle, governor, disk, versions, settings), summary.txt.
#
#   scripts/bench.sh                                     # 5 rounds + warm-up, full size
#   BENCH_ROUNDS=2 BENCH_WARMUP=0 BENCH_MB=16 BENCH_TARBALL=small.tar BENCH_QUIET_SECS=0.2 \
#     BENCH_SETTLE_SECS=5 BENCH_SYSTEMS="plain kmsfs securefs" scripts/bench.sh   # smoke test
#
# Knobs: BENCH_ROUNDS (5), BENCH_WARMUP (1), BENCH_MB (1024), BENCH_TARBALL (.tar, .tar.xz,
# .tar.gz or .crate; default /usr/src/linux-source-6.1.tar.xz), BENCH_SYSTEMS (default
# "plain kmsfs gocryptfs securefs"; add kmsfs_wb for kmsfs mounted with -o writeback_cache,
# or set BENCH_WRITEBACK=1; add kmsfs_base for a second kmsfs binary, BENCH_KMSFS_BASE, with its
# own keystore: the before/after comparison of a change, interleaved in one run; add
# kmsfs_remote, or set BENCH_REMOTE=1, for a volume under a remote master key held by a
# `kmsfs serve` on loopback with its own keystore, compared with kmsfs as remote/kmsfs), BENCH_DIR (work directory: empty or new, left in place; default
# a temporary one under /var/tmp, removed), BENCH_OUT, BENCH_KMSFS (a kmsfs binary to use;
# default: cargo build --release),
# BENCH_DIRTY_KB (16384), BENCH_SETTLE_SECS (60: the longest wait for writeback),
# BENCH_QUIET_SECS (1: how long the machine's background load is sampled before each phase),
# BENCH_ALLOW_NO_DROP=1 (run even where drop_caches is not permitted; numbers then untrusted),
# BENCH_SETTLE=0 (diagnostic: no sync, drop or wait between systems except before read),
# BENCH_AFTER_RM_SECS (90: no untar starts sooner than this after the last rm phase ended;
# on an ext4 without a journal, as this VM's root is, new inodes skip those freed in the
# last 60 s, and an untar of 10,000 entries right after an rm of that many took 1.2-1.6 s
# even after sync and drop_caches, instead of 0.5 s; 0: no wait).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${BENCH_ROUNDS:-5}
WARMUP=${BENCH_WARMUP:-1}
MB=${BENCH_MB:-1024}
DIRTY_KB=${BENCH_DIRTY_KB:-16384}
SETTLE_SECS=${BENCH_SETTLE_SECS:-60}
QUIET=${BENCH_QUIET_SECS:-1}
SETTLE=${BENCH_SETTLE:-1}
AFTER_RM=${BENCH_AFTER_RM_SECS:-90}
read -r -a SYSTEMS <<<"${BENCH_SYSTEMS:-plain kmsfs gocryptfs securefs}"
if [ "${BENCH_WRITEBACK:-0}" = 1 ] && [[ " ${SYSTEMS[*]} " != *" kmsfs_wb "* ]]; then
  SYSTEMS+=(kmsfs_wb)
fi
if [ "${BENCH_REMOTE:-0}" = 1 ] && [[ " ${SYSTEMS[*]} " != *" kmsfs_remote "* ]]; then
  SYSTEMS+=(kmsfs_remote)
fi
for s in "${SYSTEMS[@]}"; do
  case $s in plain | kmsfs | kmsfs_wb | kmsfs_base | kmsfs_remote | gocryptfs | securefs) ;;
    *) echo "BENCH_SYSTEMS: unknown system '$s' (plain kmsfs kmsfs_wb kmsfs_base kmsfs_remote gocryptfs securefs)" >&2; exit 2 ;;
  esac
done
for v in ROUNDS WARMUP MB DIRTY_KB SETTLE_SECS SETTLE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "BENCH_$v must be a whole number, not '${!v}'" >&2; exit 2; }
done
[ "$ROUNDS" -ge 1 ] || { echo "BENCH_ROUNDS must be at least 1" >&2; exit 2; }
[[ $QUIET =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "BENCH_QUIET_SECS must be a number of seconds, not '$QUIET'" >&2; exit 2; }
if [ -n "${BENCH_DIR:-}" ] && [ -n "$(ls -A "$BENCH_DIR" 2>/dev/null)" ]; then
  echo "BENCH_DIR $BENCH_DIR must be empty or not exist yet (a run starts from fresh volumes)" >&2
  exit 2
fi
uses() { [[ " ${SYSTEMS[*]} " == *" $1 "* ]]; }

[ "$(id -u)" -eq 0 ] || { echo "scripts/bench.sh runs as root (drop_caches)" >&2; exit 2; }
KMSFS_BENCH=1 scripts/install-deps.sh
if uses kmsfs || uses kmsfs_wb || uses kmsfs_remote; then
  if [ -n "${BENCH_KMSFS:-}" ]; then
    KMSFS=$BENCH_KMSFS
  else
    cargo build --release --quiet
    KMSFS=${CARGO_TARGET_DIR:-$PWD/target}/release/kmsfs
  fi
  [ -x "$KMSFS" ] || { echo "no kmsfs binary at $KMSFS" >&2; exit 1; }
fi
if uses kmsfs_base; then
  KMSFS_BASE=${BENCH_KMSFS_BASE:-}
  [ -x "$KMSFS_BASE" ] || { echo "kmsfs_base needs BENCH_KMSFS_BASE, a kmsfs binary (got '${KMSFS_BASE}')" >&2; exit 2; }
fi

if ! sync || ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
  if [ "${BENCH_ALLOW_NO_DROP:-0}" != 1 ]; then
    echo "cannot write /proc/sys/vm/drop_caches here: caches could not be made equal between" >&2
    echo "systems (set BENCH_ALLOW_NO_DROP=1 to run anyway, for a smoke test only)" >&2
    exit 1
  fi
  DROP_OK=0
else
  DROP_OK=1
fi

TARBALL=${BENCH_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
[ -r "$TARBALL" ] || { echo "no tarball at $TARBALL: set BENCH_TARBALL" >&2; exit 1; }
TARBALL_NAME=$(basename "$TARBALL")
OUT=${BENCH_OUT:-/var/tmp/kmsfs-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/kmsfs-bench.XXXXXX)}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")

declare -A PID=() # system -> daemon pid of the current round
# Unmounts everything under $WORK, stops the daemons this script started (by pid), removes
# the temporary work directory. Runs on every exit, also after a failure or Ctrl-C.
cleanup() {
  local rc=$? m p left
  set +e
  trap - EXIT INT TERM
  for m in $(findmnt -rn -o TARGET | grep "^$WORK/"); do
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
  done
  for p in "${PID[@]}"; do stop_pid "$p"; done
  # The central key service of kmsfs_remote, after the mounts that use it.
  [ -n "${SERVE_PID:-}" ] && kill "$SERVE_PID" 2>/dev/null
  left=$(findmnt -rn -o TARGET | grep "^$WORK/")
  if [ -n "$left" ]; then
    echo "still mounted, $WORK kept: $left" >&2
  elif [ -z "${BENCH_DIR:-}" ]; then
    rm -rf "$WORK"
  fi
  [ "$rc" -ne 0 ] && echo "bench failed or interrupted (exit $rc); partial results in $OUT" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive PID: the process exists and has not exited (a daemon started here with & stays a
# zombie until this shell reaps it).
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
# stop_pid PID: waits up to 10 s for a daemon to exit after its unmount, then kills it.
stop_pid() {
  local p=$1 i
  for i in $(seq 100); do alive "$p" || return 0; sleep 0.1; done
  kill "$p" 2>/dev/null
  for i in $(seq 50); do alive "$p" || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null
  return 0
}

# Helpers in Python: timing with CPU accounting, and the summary.
cat >"$WORK/timed.py" <<'PY'
# timed.py TSV QUIET ROUND COUNTED POS SYSTEM PHASE DAEMON_PID SYNC -- CMD...: runs CMD,
# appends one row to TSV. Before t0 it samples the machine for QUIET seconds (bg_busy_pct:
# the share of all CPUs busy while the bench only waits). During CMD it counts CPU seconds:
# of CMD and its children (rusage), of the daemon (/proc/PID/stat), of kernel threads
# (writeback, journal: partly work the phase caused), of every other process on the machine
# (foreign: other users' work, which the phase competed with), and steal time. With SYNC=1 a
# sync after CMD is timed on its own (sync_s).
import os, resource, subprocess, sys, time
# Ctrl-C reaches this process and the command alike: end quietly, the bench cleans up.
sys.excepthook = lambda t, v, tb: os._exit(130) if t is KeyboardInterrupt else sys.__excepthook__(t, v, tb)
tsv, quiet, rnd, counted, pos, system, phase, dpid, do_sync = sys.argv[1:10]
assert sys.argv[10] == "--"
cmd = sys.argv[11:]
HZ = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000
def cpu():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    user, nice, system_, idle, iowait, irq, softirq, steal = f
    return (user + nice + system_ + irq + softirq) / HZ, steal / HZ, sum(f) / HZ
def procs():
    """pid -> (start time, kernel thread?, CPU seconds including reaped children)."""
    res = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        res[int(d)] = (f[19], int(f[6]) & PF_KTHREAD != 0, sum(int(x) for x in f[11:15]) / HZ)
    return res
def own_ancestors():
    pids, p = {os.getpid()}, os.getpid()
    while p > 1:
        p = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        pids.add(p)
    return pids
def dirty_kb():
    m = dict(l.split(":", 1) for l in open("/proc/meminfo"))
    return int(m["Dirty"].split()[0]) + int(m["Writeback"].split()[0])
b0, _, a0 = cpu(); time.sleep(float(quiet)); b1, _, a1 = cpu()
bg = 100.0 * (b1 - b0) / max(a1 - a0, 1e-9)
dirty = dirty_kb()
skip = own_ancestors() | ({int(dpid)} if dpid != "-" else set())
p0 = procs(); ru0 = resource.getrusage(resource.RUSAGE_CHILDREN); c0, s0, _ = cpu()
start = time.time(); t0 = time.perf_counter()
rc = subprocess.run(cmd).returncode
t1 = time.perf_counter()
c1, s1, _ = cpu(); ru1 = resource.getrusage(resource.RUSAGE_CHILDREN); p1 = procs()
if rc != 0:
    sys.exit(f"{phase} on {system} failed (exit {rc}): {' '.join(cmd)}")
sync_s = 0.0
if do_sync == "1":
    u0 = time.perf_counter(); os.sync(); sync_s = time.perf_counter() - u0
cmd_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
daemon = kernel = foreign = 0.0
for pid, (st, kthread, secs) in p1.items():
    before = p0.get(pid)
    d = secs - before[2] if before and before[0] == st else secs
    if dpid != "-" and pid == int(dpid):
        daemon = d
    elif pid in skip:
        continue
    elif kthread:
        kernel += d
    else:
        foreign += d
# A process reaped in the window adds its whole life's CPU to its parent's: never count more
# than what the machine as a whole spent beside the bench's own work.
foreign = min(foreign, max(0.0, (c1 - c0) - cmd_cpu - daemon - kernel))
row = [rnd, counted, pos, system, phase, f"{t1 - t0:.3f}", f"{sync_s:.3f}", f"{cmd_cpu:.2f}",
       f"{daemon:.2f}", f"{kernel:.2f}", f"{foreign:.2f}", f"{c1 - c0:.2f}", f"{s1 - s0:.2f}",
       f"{bg:.1f}", str(dirty), time.strftime("%H:%M:%S", time.gmtime(start))]
with open(tsv, "a") as out:
    out.write("\t".join(row) + "\n")
PY

cat >"$WORK/summary.py" <<'PY'
# summary.py OUT NCPU: reads OUT/times.tsv and OUT/rounds.tsv, writes OUT/ratios.tsv, prints
# the summary.
import csv, statistics, sys
out, ncpu = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(f"{out}/times.tsv"), delimiter="\t"))
counted = [r for r in rows if r["counted"] == "1"]
PHASES = ["write", "read", "untar", "untar+sync", "ls", "cat", "rm", "rm+sync"]
t = {}  # (round, system, phase) -> seconds
for r in counted:
    key = (int(r["round"]), r["system"])
    t[key + (r["phase"],)] = float(r["seconds"])
    if r["phase"] in ("untar", "rm"):
        t[key + (r["phase"] + "+sync",)] = float(r["seconds"]) + float(r["sync_s"])
rounds = sorted({k[0] for k in t})
systems = [s for s in ["plain", "kmsfs", "gocryptfs", "securefs", "kmsfs_wb", "kmsfs_base", "kmsfs_remote"] if any(k[1] == s for k in t)]
peers = [s for s in ("gocryptfs", "securefs") if s in systems]

def ratios(phase, num, den):
    """Per round: num(round) / den(round); num and den give a time or None."""
    res = []
    for rd in rounds:
        a, b = num(rd, phase), den(rd, phase)
        if a is not None and b:
            res.append(a / b)
    return res
def get(system):
    return lambda rd, p: t.get((rd, system, p))
def best_peer(rd, p):
    ts = [t[(rd, s, p)] for s in peers if (rd, s, p) in t]
    return min(ts) if ts else None
def mmm(xs):
    return (min(xs), statistics.median(xs), max(xs)) if xs else None
def cell(x, fmt="{:5.2f}"):
    return "   -    -    - " if x is None else " ".join(fmt.format(v) for v in x)

with open(f"{out}/ratios.tsv", "w") as f:
    f.write("round\tphase\tpeer_over_kmsfs\tkmsfs_over_plain\tpeer_over_kmsfs_wb\n")
    for rd in rounds:
        for p in PHASES:
            pk = best_peer(rd, p), t.get((rd, "kmsfs", p)), t.get((rd, "plain", p)), t.get((rd, "kmsfs_wb", p))
            r1 = f"{pk[0] / pk[1]:.3f}" if pk[0] and pk[1] else ""
            r2 = f"{pk[1] / pk[2]:.3f}" if pk[1] and pk[2] else ""
            r3 = f"{pk[0] / pk[3]:.3f}" if pk[0] and pk[3] else ""
            f.write(f"{rd}\t{p}\t{r1}\t{r2}\t{r3}\n")

wb = "kmsfs_wb" in systems
base = "kmsfs_base" in systems
remote = "kmsfs_remote" in systems
print(f"{len(rounds)} counted round(s); per round: peer/kmsfs = the faster of {' and '.join(peers) or '(no peer)'}"
      " / kmsfs (above 1.00: kmsfs faster); kmsfs/plain = kmsfs / plain ext4 (time)")
head = f"{'phase':<11} {'peer/kmsfs min  med  max':>24}  {'kmsfs/plain min  med  max':>25}"
if wb:
    head += f"  {'peer/kmsfs+wb min med max':>25}"
if base:
    head += f"  {'base/kmsfs min  med  max':>25}"
if remote:
    head += f"  {'remote/kmsfs min med max':>25}"
if remote:
    print("remote/kmsfs = kmsfs under a remote key / kmsfs under a local key (time; target: median <= 1.10)")
print(head + "  target (median >= 1.25, no round < 1.00)")
for p in PHASES:
    pk = mmm(ratios(p, best_peer, get("kmsfs")))
    kp = mmm(ratios(p, get("kmsfs"), get("plain")))
    line = f"{p:<11} {cell(pk):>24}  {cell(kp):>25}"
    if wb:
        line += f"  {cell(mmm(ratios(p, best_peer, get('kmsfs_wb')))):>25}"
    if base:
        line += f"  {cell(mmm(ratios(p, get('kmsfs_base'), get('kmsfs')))):>25}"
    if remote:
        line += f"  {cell(mmm(ratios(p, get('kmsfs_remote'), get('kmsfs')))):>25}"
    verdict = "-"
    if pk:
        verdict = "met" if pk[1] >= 1.25 and pk[0] >= 1.0 else "not met"
        if p.startswith("rm") and verdict != "met" and kp and kp[1] <= 1.10:
            verdict = "met (within 10% of plain)"
    print(f"{line}  {verdict}")

print("\ntimes, s: median (min-max) over the counted rounds")
print(f"{'phase':<11}" + "".join(f"{s:>21}" for s in systems))
for p in PHASES:
    cells = []
    for s in systems:
        xs = [t[(rd, s, p)] for rd in rounds if (rd, s, p) in t]
        m = mmm(xs)
        cells.append(f"{m[1]:.2f} ({m[0]:.2f}-{m[2]:.2f})" if m else "-")
    print(f"{p:<11}" + "".join(f"{c:>21}" for c in cells))

busy = [r for r in counted if float(r["foreign_cpu_s"]) > 0.10 * float(r["seconds"]) * ncpu]
steal = sum(float(r["steal_s"]) for r in counted)
print(f"\ntimed phases during which processes outside the bench used more than 10% of the {ncpu}"
      f" CPUs: {len(busy)} of {len(counted)}; steal time in all timed phases: {steal:.1f} s")
for r in sorted(busy, key=lambda r: -float(r["foreign_cpu_s"]) / float(r["seconds"]))[:5]:
    print(f"  round {r['round']} {r['system']} {r['phase']}: {r['foreign_cpu_s']} CPU-s of other"
          f" processes in {r['seconds']} s")
placed = list(csv.DictReader(open(f"{out}/rounds.tsv"), delimiter="\t"))
cpus = {s: sorted({r["cpus_allowed"] for r in placed if r["system"] == s}) for s in systems if s != "plain"}
print("daemon CPU affinity (not pinned): " + ", ".join(f"{s} {'/'.join(c)}" for s, c in cpus.items()))
rss = [r for r in placed if r["counted"] == "1" and r["system"].startswith("kmsfs")]
for s in ("kmsfs", "kmsfs_wb", "kmsfs_base", "kmsfs_remote"):
    v = [int(r["peak_rss_mib"]) for r in rss if r["system"] == s and r["peak_rss_mib"].isdigit()]
    if v:
        print(f"{s} daemon peak RSS per round: {' '.join(map(str, v))} MiB (max {max(v)})")
PY

NCPU=$(nproc)
export KMSFS_KEYSTORE=$WORK/keystore.db KMSFS_PASSPHRASE=bench
printf 'round\tcounted\tpos\tsystem\tphase\tseconds\tsync_s\tcmd_cpu_s\tdaemon_cpu_s\tkernel_cpu_s\tforeign_cpu_s\tall_cpu_s\tsteal_s\tbg_busy_pct\tdirty_kb_at_start\tstart_utc\n' >"$OUT/times.tsv"
printf 'round\tcounted\tsystem\torder\tdaemon_pid\tcpus_allowed\tthreads\tpeak_rss_mib\n' >"$OUT/rounds.tsv"

# The environment, once per run (the daemons' placement is in rounds.tsv, per round).
record_env() {
  local f=$OUT/env.txt
  {
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r) ($(uname -v))"
    echo "debian: $(cat /etc/debian_version 2>/dev/null || echo '?')"
    echo "cpu: $NCPU x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)"
    echo "hypervisor: $(lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor:\s*//p' || true)"
    echo "cpufreq governor: $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo 'none (no cpufreq)')"
    echo "cpuidle driver/governor: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)/$(cat /sys/devices/system/cpu/cpuidle/current_governor_ro 2>/dev/null || cat /sys/devices/system/cpu/cpuidle/current_governor 2>/dev/null || echo none)"
    echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo '?')"
    echo "memory: $(sed -n 's/^MemTotal:\s*//p' /proc/meminfo)"
    echo "bench shell affinity: $(taskset -cp $$ 2>/dev/null | sed 's/.*: //') (nothing is pinned)"
    echo "cgroup cpu quota: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || echo none)"
    echo "vm: dirty_ratio=$(cat /proc/sys/vm/dirty_ratio) dirty_background_ratio=$(cat /proc/sys/vm/dirty_background_ratio) dirty_expire_centisecs=$(cat /proc/sys/vm/dirty_expire_centisecs) dirty_writeback_centisecs=$(cat /proc/sys/vm/dirty_writeback_centisecs)"
    echo "drop_caches permitted: $DROP_OK"
    echo "fuse enable_uring: $(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null || echo absent)"
    echo "work dir: $WORK on $(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$WORK")"
    echo "tarball: $TARBALL_NAME -> $TARBALL, $(stat -c %s "$TARBALL") bytes, $TAR_ENTRIES entries, on $(findmnt -n -o SOURCE -T "$TARBALL")"
    echo "tar: $(tar --version | head -n1)"
    echo "kmsfs: ${KMSFS:-not used} $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
    echo "gocryptfs: $(dpkg-query -W -f='${Version}' gocryptfs 2>/dev/null)"
    echo "securefs: $(dpkg-query -W -f='${Version}' securefs 2>/dev/null)"
    echo "settings: rounds=$ROUNDS warmup=$WARMUP mb=$MB systems=${SYSTEMS[*]} dirty_kb=$DIRTY_KB settle_secs=$SETTLE_SECS settle=$SETTLE"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$f"
}

# The tarball is decompressed once, untimed: xz alone would take one of the two cores for
# about as long as plain ext4 takes for the whole untar, in every system's timing alike.
prepare_tarball() {
  case $TARBALL in
    *.tar) ;;
    *) echo "decompressing $TARBALL_NAME once" >&2
       case $TARBALL in
         *.xz) xz -dc "$TARBALL" >"$WORK/source.tar" ;;
         *) gzip -dc "$TARBALL" >"$WORK/source.tar" ;;
       esac
       TARBALL=$WORK/source.tar ;;
  esac
  TAR_ENTRIES=$(tar -tf "$TARBALL" | wc -l)
}

wait_mounted() { # DIR PID: until DIR is a mount point, while the daemon PID lives
  local i
  for i in $(seq 200); do
    mountpoint -q "$1" && return 0
    [ -n "${2:-}" ] && ! alive "$2" && break
    sleep 0.05
  done
  echo "mount of $1 failed" >&2
  return 1
}

# The central key service of kmsfs_remote: a `kmsfs serve` on a loopback port with a keystore
# of its own ("another host"), one key, one access key the mounts sign with. Started once;
# every round's kmsfs_remote volume gets its intermediate key from it at init.
start_central() {
  local c=$WORK/central ready access ident key_id i
  mkdir -p "$c"
  export KMSFS_KEYSTORE=$c/keystore.db
  "$KMSFS" keystore init --argon2-memory-kib 65536 >/dev/null
  key_id=$("$KMSFS" key create --alias alias/bench-central)
  ident=$("$KMSFS" --json keystore info)
  access=$("$KMSFS" --json access-key create --user bench --uid 0)
  setsid "$KMSFS" serve --listen 127.0.0.1:0 --no-socket >"$c/ready" 2>"$c/serve.log" &
  SERVE_PID=$!
  export KMSFS_KEYSTORE=$WORK/keystore.db
  for i in $(seq 100); do [ -s "$c/ready" ] && break; sleep 0.1; done
  ready=$(head -n1 "$c/ready")
  [ -n "$ready" ] || { echo "kmsfs serve did not start: $(cat "$c/serve.log")" >&2; exit 1; }
  REMOTE_URL=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["Url"])' "$ready")
  REMOTE_ARN=$(python3 -c 'import json,sys; i=json.loads(sys.argv[1]); print("arn:aws:kms:%s:%s:key/%s" % (i["Region"], i["AccountId"], sys.argv[2]))' "$ident" "$key_id")
  REMOTE_KEY_ID=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["AccessKey"]["AccessKeyId"])' "$access")
  REMOTE_SECRET=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["AccessKey"]["SecretAccessKey"])' "$access")
}
# remote_env CMD...: runs CMD with the central service's credentials (and no ~/.aws profile).
remote_env() {
  AWS_ACCESS_KEY_ID=$REMOTE_KEY_ID AWS_SECRET_ACCESS_KEY=$REMOTE_SECRET AWS_PROFILE=kmsfs-bench-none "$@"
}

# mount_system ROUND SYSTEM: fresh volume for SYSTEM in this round, mounted at $R/SYSTEM/mnt;
# sets PID[SYSTEM].
mount_system() {
  local r=$1 s=$2 d=$WORK/r$1/$2 pid opts=()
  mkdir -p "$d/mnt"
  case $s in
    plain) return 0 ;;
    kmsfs_remote)
      mkdir -p "$d/volume"
      remote_env "$KMSFS" volume init --name "bench-r$r-$s" --key "$REMOTE_ARN" --kms-endpoint "$REMOTE_URL" \
        "$d/volume" >/dev/null
      remote_env "$KMSFS" mount "$d/volume" "$d/mnt" 2>"$d/daemon.log"
      pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$d/daemon.log")
      [ -n "$pid" ] || { echo "kmsfs mount failed: $(cat "$d/daemon.log")" >&2; return 1; } ;;
    kmsfs | kmsfs_wb | kmsfs_base)
      [ "$s" = kmsfs_wb ] && opts=(-o writeback_cache)
      local bin=$KMSFS ks=$KMSFS_KEYSTORE
      # The base binary may read an older keystore schema: it gets its own keystore.
      [ "$s" = kmsfs_base ] && bin=$KMSFS_BASE ks=$WORK/keystore-base.db
      mkdir -p "$d/volume"
      KMSFS_KEYSTORE=$ks "$bin" volume init --name "bench-r$r-$s" "$d/volume" >/dev/null
      KMSFS_KEYSTORE=$ks "$bin" mount "${opts[@]}" "$d/volume" "$d/mnt" 2>"$d/daemon.log"
      pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$d/daemon.log")
      [ -n "$pid" ] || { echo "kmsfs mount failed: $(cat "$d/daemon.log")" >&2; return 1; } ;;
    gocryptfs)
      mkdir -p "$d/cipher"
      gocryptfs -q -init -extpass "echo bench" "$d/cipher" >/dev/null
      # -fg: the daemon is the process started here, so its pid is known without a search;
      # setsid (no fork: a background job is no group leader): a Ctrl-C of the bench must not
      # reach it, or it unmounts itself and a phase would run in the bare directory beneath.
      setsid gocryptfs -fg -q -extpass "echo bench" "$d/cipher" "$d/mnt" >"$d/daemon.log" 2>&1 &
      pid=$! ;;
    securefs)
      mkdir -p "$d/cipher"
      securefs create --pass bench "$d/cipher" >/dev/null
      setsid securefs mount --pass bench "$d/cipher" "$d/mnt" >"$d/daemon.log" 2>&1 &
      pid=$! ;;
  esac
  PID[$s]=$pid
  wait_mounted "$d/mnt" "$pid"
}

# unmount_round ROUND COUNTED ORDER: records each daemon's placement and peak RSS, unmounts,
# waits for the daemons to exit, removes the round's directories.
unmount_round() {
  local r=$1 c=$2 order=$3 s p cpus threads rss
  for s in "${SYSTEMS[@]}"; do
    p=${PID[$s]:-}
    cpus=- threads=- rss=-
    if [ -n "$p" ]; then
      cpus=$(sed -n 's/^Cpus_allowed_list:\s*//p' "/proc/$p/status")
      threads=$(sed -n 's/^Threads:\s*//p' "/proc/$p/status")
      rss=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$p/status")
      fusermount3 -u "$WORK/r$r/$s/mnt"
      stop_pid "$p"
      unset "PID[$s]"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$s" "$order" "${p:--}" "$cpus" "$threads" "$rss" >>"$OUT/rounds.tsv"
  done
  rm -rf "${WORK:?}/r$r"
}

dirty_kb() { awk '/^(Dirty|Writeback):/ {s += $2} END {print s}' /proc/meminfo; }

# settle ROUND PHASE: the same page-cache and writeback state before every phase of every
# system. BENCH_SETTLE=0 only drops caches before read, as gocryptfs's canonical benchmark
# runs: a diagnostic run to see how much one system's leftover writeback moves the next one's
# times, never a result.
settle() {
  local r=$1 p=$2 s i
  if [ "$SETTLE" = 0 ]; then
    if [ "$p" = read ]; then sync; [ "$DROP_OK" = 1 ] && echo 3 >/proc/sys/vm/drop_caches; fi
    return 0
  fi
  for s in "${SYSTEMS[@]}"; do [ "$s" = plain ] || stat -f "$WORK/r$r/$s/mnt" >/dev/null; done
  sync
  [ "$DROP_OK" = 1 ] && echo 3 >/proc/sys/vm/drop_caches
  for i in $(seq $((SETTLE_SECS * 5))); do
    [ "$(dirty_kb)" -le "$DIRTY_KB" ] && return 0
    sleep 0.2
  done
  echo "warning: Dirty+Writeback still $(dirty_kb) kB after ${SETTLE_SECS} s (others writing?)" >&2
}

# wait_after_rm: until BENCH_AFTER_RM_SECS have passed since the last rm phase ended. ext4
# without a journal (find_inode_bit/recently_deleted) does not reuse an inode freed less
# than 60 s ago (300 s while its inode-table block is dirty) whose inode-table block is in
# the buffer cache, so every create scans past the inodes the previous round's rm -rf
# freed: whichever system came first in an untar soon after would pay for it. The
# drop_caches before each phase removes most of that, not all (the blocks are read back).
LAST_RM_END=0
wait_after_rm() {
  local left=$((LAST_RM_END + AFTER_RM - $(date +%s)))
  [ "$AFTER_RM" -gt 0 ] && [ "$left" -gt 0 ] || return 0
  echo "waiting ${left} s after the last rm before an untar (BENCH_AFTER_RM_SECS)" >&2
  sleep "$left"
}

# The phases; each runs as: bash -c CMD _ DIR TARBALL MB
declare -A CMD=(
  [write]='dd if=/dev/zero of="$1/zero" bs=1M count="$3" conv=fsync status=none'
  [read]='dd if="$1/zero" of=/dev/null bs=1M status=none'
  [untar]='tar -xf "$2" -C "$1"'
  [ls]='ls -lR "$1" >/dev/null'
  [cat]='find "$1" -type f -print0 | xargs -0 -r cat >/dev/null'
  [rm]='rm -rf "$1"/* && stat -f "$1" >/dev/null'
)
PHASES=(write read untar ls cat rm)

# run_round ROUND COUNTED: mounts fresh volumes, runs every phase for every system in this
# round's order (the systems rotated by ROUND), unmounts.
run_round() {
  local r=$1 c=$2 n=${#SYSTEMS[@]} i p s dir order=() do_sync
  for i in $(seq 0 $((n - 1))); do order+=("${SYSTEMS[$(((i + r) % n))]}"); done
  echo "round $r$([ "$c" = 0 ] && echo ' (warm-up, not counted)'): ${order[*]}" >&2
  for s in "${SYSTEMS[@]}"; do mount_system "$r" "$s"; done
  for p in "${PHASES[@]}"; do
    for i in "${!order[@]}"; do
      s=${order[$i]} dir=$WORK/r$r/${order[$i]}/mnt
      settle "$r" "$p"
      # A daemon that died leaves the bare directory beneath its mount point: never time that.
      if [ "$s" != plain ] && { ! mountpoint -q "$dir" || ! alive "${PID[$s]}"; }; then
        echo "the $s mount at $dir is gone (daemon ${PID[$s]}): see $WORK/r$r/$s/daemon.log" >&2
        exit 1
      fi
      # Every system's untar reads the tarball from the page cache, none from the disk.
      [ "$p" = untar ] && cat "$TARBALL" >/dev/null
      [ "$p" = untar ] && wait_after_rm
      do_sync=0
      [ "$p" = untar ] || [ "$p" = rm ] && do_sync=1
      python3 "$WORK/timed.py" "$OUT/times.tsv" "$QUIET" "$r" "$c" "$i" "$s" "$p" "${PID[$s]:--}" "$do_sync" \
        -- bash -c "${CMD[$p]}" _ "$dir" "$TARBALL" "$MB"
      [ "$p" = read ] && rm -f "$dir/zero"
      [ "$p" = rm ] && LAST_RM_END=$(date +%s)
    done
  done
  unmount_round "$r" "$c" "${order[*]}"
}

prepare_tarball
record_env
if uses kmsfs || uses kmsfs_wb || uses kmsfs_remote; then
  "$KMSFS" keystore init --argon2-memory-kib 65536 >/dev/null
fi
if uses kmsfs_remote; then
  start_central
fi
if uses kmsfs_base; then
  KMSFS_KEYSTORE=$WORK/keystore-base.db "$KMSFS_BASE" keystore init --argon2-memory-kib 65536 >/dev/null
fi
echo "kmsfs bench: $ROUNDS counted round(s)$([ "$WARMUP" = 1 ] && echo ' + 1 warm-up'), ${MB} MiB," \
  "tarball $TARBALL_NAME ($TAR_ENTRIES entries, $(stat -c %s "$TARBALL") bytes), $NCPU cores; results in $OUT" >&2
first=1
[ "$WARMUP" = 1 ] && first=0
for r in $(seq "$first" "$ROUNDS"); do
  run_round "$r" "$([ "$r" = 0 ] && echo 0 || echo 1)"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
{
  echo "kmsfs bench: $ROUNDS counted round(s)$([ "$WARMUP" = 1 ] && echo ' + 1 warm-up'), ${MB} MiB," \
    "tarball $TARBALL_NAME ($TAR_ENTRIES entries), $NCPU cores, $(uname -r)"
  [ "$SETTLE" = 0 ] && echo "BENCH_SETTLE=0: systems NOT settled between phases (diagnostic run, not a result)"
  [ "$DROP_OK" = 0 ] && echo "drop_caches was not permitted: caches NOT equal between systems (not a result)"
  python3 "$WORK/summary.py" "$OUT" "$NCPU"
  echo "raw times: $OUT/times.tsv; per-round ratios: $OUT/ratios.tsv; environment: $OUT/env.txt"
} | tee "$OUT/summary.txt"
