#!/usr/bin/env bash
# The test command: installs test dependencies, checks formatting and lints, runs every
# test (unit, KMS, CLI, and the FUSE integration suites that mount real volumes), then the
# AWS KMS API suite (tests/api: the real aws CLI and boto3 against `kmsfs serve` over
# loopback) and the web console suite (tests/console: headless Chromium) with the binary cargo
# just built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo_status=0
cargo test --no-fail-fast "$@" || cargo_status=$?
# The API suite runs even when a cargo test failed (both results are wanted), and either
# failure fails the run. pytest exits 5 when it collected no test: that is a failure too.
cargo build --quiet
api_status=0
python3 -m pytest tests/api tests/console -q -p no:cacheprovider || api_status=$?
[ "$api_status" -eq 5 ] && echo "error: tests/api collected no test" >&2
[ "$cargo_status" -ne 0 ] && exit "$cargo_status"
exit "$api_status"
