#!/usr/bin/env bash
# The test command: installs test dependencies, checks formatting and lints, runs every
# test (unit, KMS, CLI, and the FUSE integration suites that mount real volumes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --no-fail-fast "$@"
