#!/usr/bin/env bash
# The whole test suite on this machine: installs what the tests need where
# it is missing (scripts/test-deps.sh), then runs `cargo test --workspace`
# with any arguments given (e.g. `scripts/test.sh -- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test --workspace "$@"
