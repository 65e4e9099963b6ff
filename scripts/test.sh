#!/usr/bin/env bash
# Runs RouteMQ's tests: formatting and lints, unit, property and scenario tests, and the
# multi-process integration tests (real routemq processes on loopback).
#
#   ./scripts/test.sh            everything CI runs
#   ./scripts/test.sh -- ring    extra arguments go to the test runner (a filter, for instance)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
ensure_test_deps

say "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"

say "cargo clippy (warnings are errors)"
cargo clippy --locked --workspace --all-targets -- -D warnings

# One build serves every stage: the integration tests run the binaries from this target dir.
build_all
export ROUTEMQ_BIN_DIR

shift_args=()
if [ "${1:-}" = "--" ]; then shift; shift_args=("$@"); fi

if cargo nextest --version >/dev/null 2>&1; then
    say "cargo nextest run"
    cargo nextest run --locked --workspace --no-fail-fast "${shift_args[@]}"
else
    say "cargo test (install cargo-nextest for faster, isolated runs)"
    cargo test --locked --workspace --no-fail-fast "${shift_args[@]}"
fi
