#!/usr/bin/env bash
# Fuzzes the parsers that read untrusted bytes (fuzz/fuzz_targets: file header, KMS blob,
# volume config, key policy, directory metadata) with cargo-fuzz (libFuzzer), one target at
# a time, FUZZ_SECS seconds each (default 60). Starts from the committed seeds
# (fuzz/corpus/TARGET, read only); inputs found go to fuzz/target/corpus/TARGET, crashes to
# fuzz/artifacts/TARGET, the full log to fuzz/target/fuzz-TARGET.log (none committed).
# Installs cargo-fuzz if it is missing. The toolchain is stable: RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass the nightly flags it needs (sanitizer, coverage instrumentation).
#
#   scripts/fuzz.sh                       # every target, 60 s each
#   FUZZ_SECS=600 scripts/fuzz.sh kms_blob
#
# A crash is replayed with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET artifacts/TARGET/crash-...
# Exit status 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECS:-60}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build

status=0
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t"
  log="target/fuzz-$t.log"
  echo "== $t: $secs s"
  if cargo fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
    echo "   ok: ${execs:-?} executions, ${cov:-cov: ?}, corpus $(ls "target/corpus/$t" | wc -l) inputs"
  else
    status=1
    echo "   FAILED: see fuzz/$log and fuzz/artifacts/$t/"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 | sed 's/^/   /'
  fi
done
exit $status
