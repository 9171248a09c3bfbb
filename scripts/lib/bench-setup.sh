# Sourced by the API benchmarks (scripts/bench-api.sh, scripts/bench-asym.sh): installs what
# they run (wrk, moto, boto3), builds the release binary unless KMSFS_BIN names one, checks
# the common knobs, and puts scripts/lib on PYTHONPATH for their shared Python helpers
# (kmsbench.py). Expects to be sourced from the repository's root with `set -euo pipefail`.
# The caller sets its own default for CONNECTIONS before sourcing.
scripts/install-deps.sh

if [ -z "${KMSFS_BIN:-}" ]; then
  flock /tmp/kmsfs-cargo.lock cargo build --release --quiet
  KMSFS_BIN="${CARGO_TARGET_DIR:-target}/release/kmsfs"
fi
export KMSFS_BIN
export ROUNDS="${ROUNDS:-3}" SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
export CONNECTIONS THREADS="${THREADS:-2}"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "ROUNDS must be 1..20" >&2; exit 2; }
[ "$SECONDS_PER_RUN" -ge 1 ] && [ "$SECONDS_PER_RUN" -le 60 ] || { echo "SECONDS_PER_RUN must be 1..60" >&2; exit 2; }
export PYTHONPATH="$PWD/scripts/lib${PYTHONPATH:+:$PYTHONPATH}"
